import pytest

from rollouts.gates import judge_health


@pytest.mark.parametrize(
    ("status", "body", "expect", "ok", "reason"),
    [
        (200, '{"version": "2"}', "2", True, "healthy"),
        (200, '{"version": "1"}', "2", False, "reports version '1', expected '2'"),
        (200, "not json", "2", False, "reports version None, expected '2'"),
        (200, "not json", None, True, "healthy"),
        (500, '{"version": "2"}', "2", False, "HTTP 500"),
        (200, '{"version": 3}', "3", True, "healthy"),
    ],
)
def test_judge_health(status: int, body: str, expect: str | None, ok: bool, reason: str) -> None:
    got_ok, got_reason, _version = judge_health(status, body, expect)
    assert (got_ok, got_reason) == (ok, reason)


def test_http_gate_reports_its_progress_after_each_attempt() -> None:
    """A real HTTP server on 127.0.0.1: two 500s, then healthy answers."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rollouts.gates import GateProgress, http_gate

    answers = iter([500, 500, 200, 200, 200])

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = next(answers, 200)
            body = b'{"version": "2"}'
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen: list[GateProgress] = []
    try:
        result = http_gate(
            f"http://127.0.0.1:{server.server_address[1]}/health",
            expect_version="2",
            passes=3,
            deadline_s=60,
            interval_s=0.01,
            on_attempt=seen.append,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.ok
    assert [(p.passes, p.last, p.status_code) for p in seen] == [
        (0, "HTTP 500", 500),
        (0, "HTTP 500", 500),
        (1, "healthy", 200),
        (2, "healthy", 200),
        (3, "healthy", 200),
    ]
    assert all(p.needed == 3 and 0 < p.left_s <= 60 for p in seen)
    assert [p.attempts for p in seen] == [1, 2, 3, 4, 5]
    assert seen[0].as_detail()["left_s"] >= seen[-1].as_detail()["left_s"]
