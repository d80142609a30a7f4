"""The CLI's client of a running ``cpdops serve``: where it is, which token, and its errors.

The URL and the token come, first found wins, from ``--url``/``--token``, the environment
(``CPDOPS_URL``, ``CPDOPS_TOKEN``) and a config file (``$CPDOPS_CONFIG``, else
``$XDG_CONFIG_HOME/cpdops/config.toml``, else ``~/.config/cpdops/config.toml``)::

    [default]
    url = "http://127.0.0.1:8077"
    token = "cpd_…"          # or: token_file = "~/.config/cpdops/token"

A file that holds a token (the config file with ``token``, or the ``token_file``) must not be
readable by group or others (like ssh's private keys): it is refused, naming ``chmod 600``.

Errors of the server become cpdops errors, so the CLI's exit codes follow: 4xx → ``ApiRefused``
(an ``InputError``, exit 2) with the server's ``detail`` (a 422 lists each field's path); a
server that cannot be reached, a timeout or a 5xx → ``ApiUnavailable`` (exit 1).
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from orchestrator.errors import InputError, OperationFailed

CONFIG_KEYS = frozenset({"url", "token", "token_file"})
TOKEN_HINT = "make one with `cpdops token create --role viewer|operator|admin` (on the database)"
TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # a plan asks every Docker host


class ApiRefused(InputError):
    """The server refused the request (4xx): bad input, unknown object, conflict, no access."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiUnavailable(OperationFailed):
    """The server could not be reached, timed out or failed (5xx)."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None
    source: str  # where the URL came from: "--url", "CPDOPS_URL" or the config file's path


def config_path(env: Mapping[str, str]) -> Path:
    if env.get("CPDOPS_CONFIG"):
        return Path(env["CPDOPS_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "cpdops" / "config.toml"


def _check_private(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"{path}: {what} is accessible by group or others (mode {stat.S_IMODE(mode):03o}); "
            f"it holds an API token: chmod 600 {path}"
        )


def read_config(path: Path) -> dict[str, str]:
    """The ``[default]`` table of the config file ({} when the file does not exist)."""
    profile = "default"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid TOML file: {exc}") from exc
    section = doc.get(profile)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InputError(f"{path}: [{profile}] must be a table")
    unknown = sorted(set(section) - CONFIG_KEYS)
    if unknown:
        raise InputError(
            f"{path}: [{profile}] unknown key {unknown[0]!r} "
            f"(known: {', '.join(sorted(CONFIG_KEYS))})"
        )
    for key, value in section.items():
        if not isinstance(value, str):
            raise InputError(f"{path}: [{profile}] {key} must be a string")
    if "token" in section:
        if "token_file" in section:
            raise InputError(f"{path}: [{profile}] give token or token_file, not both")
        _check_private(path, "the config file")
    if "token_file" in section:
        token_file = Path(section["token_file"]).expanduser()
        if not token_file.is_absolute():
            token_file = path.parent / token_file
        try:
            _check_private(token_file, "the token file")
            token = token_file.read_text().strip()
        except OSError as exc:
            raise InputError(
                f"{path}: [{profile}] token_file {str(token_file)!r}: {exc.strerror}"
            ) from exc
        if not token:
            raise InputError(f"{token_file}: the token file is empty")
        section = {**section, "token": token}
    return dict(section)


def resolve_endpoint(url: str | None, token: str | None, env: Mapping[str, str]) -> Endpoint | None:
    """Where the API is (None: no URL anywhere, so the CLI works on the database directly).

    The config file's token is sent only to the config file's URL (a ``--url`` or
    ``CPDOPS_URL`` elsewhere does not receive it)."""
    path = config_path(env)
    given_url = url or env.get("CPDOPS_URL") or None
    given_token = token or env.get("CPDOPS_TOKEN") or None
    source = "--url" if url else "CPDOPS_URL" if given_url else str(path)
    file = read_config(path) if given_url is None or given_token is None else {}
    chosen_url = given_url or file.get("url")
    if not chosen_url:
        return None
    parts = urlsplit(chosen_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(
            f"{source}: {chosen_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8077"
        )
    chosen_token = given_token
    if chosen_token is None and file.get("url", "").rstrip("/") == chosen_url.rstrip("/"):
        chosen_token = file.get("token")
    return Endpoint(url=chosen_url.rstrip("/"), token=chosen_token, source=source)


def _field_errors(detail: list[Any]) -> str:
    parts = []
    for err in detail:
        if not isinstance(err, dict):
            parts.append(str(err))
            continue
        loc = [str(x) for x in err.get("loc", [])]
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:] if len(loc) > 1 else loc
        where = ".".join(loc)
        parts.append(f"{where}: {err.get('msg', '')}" if where else str(err.get("msg", "")))
    return "; ".join(parts)


def error_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        return _field_errors(detail)
    if detail is None:
        return response.text.strip()[:200] or response.reason_phrase
    return str(detail)


class ApiClient:
    """A thin synchronous client; methods return the decoded JSON of a 2xx answer."""

    def __init__(self, endpoint: Endpoint, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
        self._http = httpx.Client(
            base_url=endpoint.url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    @staticmethod
    def path(*parts: str | int) -> str:
        """``/api/v1/<parts>`` with each part quoted (a monitor id holds a slash)."""
        return "/api/v1/" + "/".join(quote(str(p), safe="/") for p in parts)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.endpoint.url
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ApiUnavailable(
                f"cannot reach cpdops at {url} ({self.endpoint.source}): {exc}; "
                "is `cpdops serve` running there?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ApiUnavailable(f"cpdops at {url} did not answer in time ({exc})") from exc
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"request to cpdops at {url} failed: {exc}") from exc
        status = response.status_code
        if status < 400:
            return response
        message = error_message(response)
        if status == 401:
            if not self.endpoint.token:
                raise ApiRefused(
                    f"{url} needs a token: set CPDOPS_TOKEN, --token or token in the config "
                    f"file; {TOKEN_HINT}",
                    status,
                )
            raise ApiRefused(f"{message} (HTTP 401 from {url}); {TOKEN_HINT}", status)
        if status == 403:
            raise ApiRefused(f"{message} (HTTP 403); ask an admin for a token of that role", status)
        if status < 500:
            raise ApiRefused(f"{message} (HTTP {status})", status)
        raise ApiUnavailable(f"cpdops at {url} failed: HTTP {status}: {message}")

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def delete(self, path: str) -> Any:
        response = self.request("DELETE", path)
        return response.json() if response.content else None

    def raw(self, path: str) -> httpx.Response:
        return self.request("GET", path)
