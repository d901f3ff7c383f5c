"""What every route shares: the request limits, the bearer-token guard, the body-size cap, and the small
checks of a multipart form (its content type, its true/false options)."""
from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from fastapi import HTTPException, Request


@dataclass
class Limits:
    """What one request may ask for; beyond these the answer is 413 or 422."""

    max_upload_mb: float = 50.0  # any request body
    max_patch_pixels: int = 4096 * 4096  # one uploaded patch image (before decoding)
    max_slide_pixels: int = 2_000_000_000  # one slide (its header's size)
    max_files: int = 64  # patches per request
    max_texts: int = 256  # tweets per request
    max_text_chars: int = 2000  # Kaggle's longest tweet, HTML-escaped, is under 400
    max_batch: int = 256  # items per shared forward pass
    max_wait_ms: float = 2.0  # how long a lone request waits for company
    max_slide_tiles: int = 2_000_000  # grid cells of one slide job (a large real slide at stride 32: ~1 M)
    max_image_slide_pixels: int = 100_000_000  # a PNG/JPEG slide, decoded whole (300 MB of RGB)
    max_slide_upsample: float = 4.0  # level 0 enlarged at most this much to the model's µm per pixel
    max_jobs: int = 4  # slide jobs queued or running at once (429 beyond)
    job_ttl_s: float = 3600.0  # a finished job and its files are removed this long after it ends

    SHOWN = ("max_upload_mb", "max_files", "max_texts", "max_text_chars", "max_slide_pixels", "max_slide_tiles",
             "max_image_slide_pixels", "max_slide_upsample", "max_jobs", "job_ttl_s")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def shown(self) -> dict:
        """The limits a caller may plan by (/api/models, /api/health)."""
        return {k: getattr(self, k) for k in self.SHOWN}


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
