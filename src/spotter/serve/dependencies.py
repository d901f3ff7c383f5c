"""What every route shares: the request limits, the bearer-token guard, the body-size cap, and the small
checks of a multipart form (its content type, its true/false options)."""
from __future__ import annotations

import hmac
import json

from fastapi import HTTPException, Request

from .limits import Limits  # noqa: F401 (the routes' shared limits)




def server_of(request: Request):
    """The application's `Server` (the loaded runs and the jobs), as a route dependency."""
    return request.app.state.server


def bearer(token: str | None):
    """The API's guard: with a token, every call must send 'Authorization: Bearer <token>'."""
    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "this server needs 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
    return authorised


def require_multipart(request: Request, what: str, field_name: str) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, f"send {what} as multipart/form-data, field '{field_name}'")


def flag(name: str, request: Request, fields: dict[str, str]) -> bool:
    """A true/false option from the form or the query string (422 for anything else)."""
    value = fields.get(name, request.query_params.get(name, "false")).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        raise HTTPException(422, f"{name} must be true or false, got {value[:20]!r}")
    return value in ("true", "1", "yes", "on")


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, judged by Content-Length before reading, and by
    counting while reading when the length is not declared (chunked uploads)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_json(send, 413, f"request body over this server's cap of "
                                               f"{self.max_bytes / 1024 / 1024:g} MB")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over this server's cap of {self.max_bytes / 1024 / 1024:g} MB")
            return message

        return await self.app(scope, counted, send)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
