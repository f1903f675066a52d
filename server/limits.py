"""Request body size limit (413) as a plain ASGI middleware: checked on Content-Length before
anything is read and again while the body streams in (a client may lie or send chunked): past
the limit the 413 goes out at once and the app sees the client disconnect."""
from __future__ import annotations

import json
from typing import Any

#: default limit: 4 MiB (a /predict window of ~1,400 candles is ~170 kB; a full batch ~2.7 MB)
MAX_BODY_BYTES = 4 * 1024 * 1024


class BodyLimit:
    """Answer 413 to a request whose body is larger than ``limit`` bytes."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0 or size > self.limit:
                await self._refuse(send, size)
                return
        seen = 0
        started = refused = False

        async def limited_receive() -> dict:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # answer now; the app sees the client leave and whatever it says is dropped
                    refused = True
                    if not started:
                        await self._refuse(send, seen)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    async def _refuse(self, send: Any, size: int) -> None:
        what = "an invalid Content-Length" if size < 0 else f"{size:,} bytes"
        body = json.dumps({"detail": f"request body too large ({what}; the limit is {self.limit:,} bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
