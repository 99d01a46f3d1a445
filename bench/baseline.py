"""The server stack's ceiling: a bare ASGI app on the same uvicorn that answers a constant body of the hook's size."""

from __future__ import annotations

import os
from typing import Any

from bench.servers import ROOT

Scope = dict[str, Any]


def create_app() -> Any:
    size = int(os.environ.get("BASELINE_BODY_BYTES", "0")) or len(
        (ROOT / "tests/fixtures/existing-children/response.json").read_bytes()
    )
    body = b'{"pad":"' + b"x" * max(0, size - 10) + b'"}'

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app
