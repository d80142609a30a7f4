"""Where the CLI finds the API and its token (``orchestrator.client.resolve_endpoint``), and how
the server's errors become messages."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from orchestrator.client import ApiClient, ApiRefused, ApiUnavailable, Endpoint, resolve_endpoint
from orchestrator.errors import InputError


def config(tmp_path: Path, text: str, mode: int = 0o600) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return {"CPDOPS_CONFIG": str(path)}


def test_no_url_anywhere_is_direct_mode(tmp_path: Path) -> None:
    assert resolve_endpoint(None, None, {"CPDOPS_CONFIG": str(tmp_path / "none.toml")}) is None
    assert resolve_endpoint(None, "t", config(tmp_path, '[default]\ntoken = "x"\n')) is None


def test_precedence_option_then_environment_then_file(tmp_path: Path) -> None:
    env = config(tmp_path, '[default]\nurl = "http://file:1"\ntoken = "file-token"\n')
    assert resolve_endpoint(None, None, env) == Endpoint(
        "http://file:1", "file-token", str(tmp_path / "config.toml")
    )
    env_url = {**env, "CPDOPS_URL": "http://env:2/", "CPDOPS_TOKEN": "env-token"}
    assert resolve_endpoint(None, None, env_url) == Endpoint(
        "http://env:2", "env-token", "CPDOPS_URL"
    )
    assert resolve_endpoint("http://opt:3", "opt-token", env_url) == Endpoint(
        "http://opt:3", "opt-token", "--url"
    )
    # the file's token goes to the file's URL only
    assert resolve_endpoint("http://opt:3", None, env) == Endpoint("http://opt:3", None, "--url")
    assert resolve_endpoint("http://file:1/", None, env) == Endpoint(
        "http://file:1", "file-token", "--url"
    )


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ('[default]\nurl = "http://h:1"\ntoken = "t"\n', 0o640, "chmod 600"),
        ('[default]\nurl = "http://h:1"\ntoken = "t"\n', 0o604, "mode 604"),
        ('[default]\nurl = "h:1"\n', 0o644, "is not an http(s) URL"),
        ("[default]\nurl = 1\n", 0o644, "url must be a string"),
        ('[default]\nuri = "http://h:1"\n', 0o644, "unknown key 'uri'"),
        ('[default]\ntoken = "t"\ntoken_file = "f"\n', 0o600, "not both"),
        ('[default]\nurl = "http://h:1"\ntoken_file = "missing"\n', 0o644, "token_file"),
        ("default = 1\n", 0o644, "[default] must be a table"),
        ("[default\n", 0o644, "not a valid TOML file"),
    ],
)
def test_bad_config_files_are_input_errors(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    with pytest.raises(InputError) as err:
        resolve_endpoint(None, None, config(tmp_path, text, mode))
    assert message in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "config.toml")), "it names the file"


def test_a_config_without_a_secret_may_be_readable(tmp_path: Path) -> None:
    token_file = tmp_path / "tok"
    token_file.write_text("cpd_abc\n")
    token_file.chmod(0o600)
    env = config(tmp_path, '[default]\nurl = "http://h:1"\ntoken_file = "tok"\n', 0o644)
    assert resolve_endpoint(None, None, env) == Endpoint(
        "http://h:1", "cpd_abc", str(tmp_path / "config.toml")
    )


def answering(status: int, body: object) -> ApiClient:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return ApiClient(Endpoint("http://h:1", "t", "--url"), transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (401, {"detail": "token expired"}, ApiRefused, "token expired (HTTP 401 from http://h:1)"),
        (403, {"detail": "this needs role admin"}, ApiRefused, "this needs role admin (HTTP 403)"),
        (404, {"detail": "no rollout 9"}, ApiRefused, "no rollout 9 (HTTP 404)"),
        (
            422,
            {"detail": [{"loc": ["body", "strategy", "waves", 0], "msg": "bad", "type": "x"}]},
            ApiRefused,
            "strategy.waves.0: bad (HTTP 422)",
        ),
        (503, {"detail": "database unavailable"}, ApiUnavailable, "HTTP 503: database unavailable"),
    ],
)
def test_server_errors_become_messages(
    status: int, body: object, error: type[Exception], message: str
) -> None:
    client = answering(status, body)
    with pytest.raises(error) as err:
        client.get("/api/v1/rollouts/9")
    assert message in str(err.value)
