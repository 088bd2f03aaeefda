"""A key is never written to a log: not even the one a WebSocket carries in its URL
(``?token=``, as browsers and the dashboard send it), which uvicorn logs with every
handshake (the real API process, its real log)."""

from __future__ import annotations

import websockets

from services.api.redact import without_keys
from tests.conftest import ADMIN_KEY, wait_for
from tests.e2e.conftest import ServiceProcess, free_port, wait_http_ok


async def test_a_websockets_key_in_its_url_is_not_logged(start_service: object) -> None:
    """Seen failing before the filter: 'WebSocket /jobs/stream?token=<the key>'."""
    port = free_port()
    api: ServiceProcess = start_service("api", env={"SWITCHYARD_API_PORT": str(port)})  # type: ignore[operator]
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", api)
    wrong = "sy_not-a-key-but-secret-all-the-same"
    for key in (ADMIN_KEY, wrong):
        url = f"ws://127.0.0.1:{port}/jobs/stream?type=demo.echo&token={key}"
        async with websockets.connect(url) as ws:
            await ws.ping()

    async def both_logged() -> bool:
        return api.output().count("token=[redacted]") >= 2

    await wait_for(both_logged, timeout=10, what="both handshakes in the API's log")
    log = api.output()
    assert ADMIN_KEY not in log and wrong not in log
    assert "type=demo.echo&token=[redacted]" in log  # the rest of the URL is kept


def test_every_token_in_a_text_is_redacted() -> None:
    assert without_keys("/s?token=a&x=1&token=b") == "/s?token=[redacted]&x=1&token=[redacted]"
    assert without_keys('"GET /s?TOKEN=abc HTTP/1.1"') == '"GET /s?TOKEN=[redacted] HTTP/1.1"'
    assert without_keys("/s?mytoken=keep") == "/s?mytoken=keep"
