#!/bin/sh
# `cpdops` in the image. Every CPDOPS_<NAME>_FILE variable (a docker-compose secret, say) is
# read into CPDOPS_<NAME>, so secrets need not sit in the environment of the container spec.
# CPDOPS_DATABASE_PASSWORD, when set, replaces "{password}" in CPDOPS_DATABASE_URL
# (URL-quoted), so the URL itself need not be a secret.
set -eu
for var in $(env | sed -n 's/^\(CPDOPS_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
  file="$(printenv "${var}_FILE")"
  [ -r "$file" ] || { echo "cpdops: ${var}_FILE=$file is not readable" >&2; exit 2; }
  export "$var=$(cat "$file")"
  unset "${var}_FILE"
done
exec python3 -c '
import os, urllib.parse
password = os.environ.pop("CPDOPS_DATABASE_PASSWORD", None)
url = os.environ.get("CPDOPS_DATABASE_URL", "")
if password is not None and "{password}" in url:
    quoted = urllib.parse.quote(password, safe="")
    os.environ["CPDOPS_DATABASE_URL"] = url.replace("{password}", quoted)
from orchestrator.cli import main
main(prog_name="cpdops")
' "$@"
