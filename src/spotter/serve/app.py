"""The FastAPI application: every run given on the command line, loaded once, behind a JSON API and a page.

Routes (JSON in and out; errors are `{"detail": "..."}` with a 4xx code, never a stack trace):
  GET  /api/health, /api/models
  POST /api/histo/{model}/predict      multipart `files` (TIFF/PNG/JPEG), form or query `tta`, `explain`
  POST /api/tweets/{model}/predict     {"texts": [...], "keywords": [...]?, "explain": false}
  POST /api/histo/{model}/slides       multipart `file` -> {"job": id}
  GET  /api/jobs/{id}, /api/jobs/{id}/files/{name}; DELETE /api/jobs/{id} cancels
  GET  /ping, POST /predictions/{model}, POST /explanations/{model}   (TorchServe's names for the same)
  GET  /  the page (from the package), /docs the OpenAPI docs

The parts: `server` (the loaded runs, batching, explanations), `jobs` (whole-slide jobs), `routes/*`
(one router per group), `dependencies` (limits, the token guard, the body cap), `schemas` (requests and
answers), `info` (what the model picker shows), `runs` (loading a run's predictor).
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..errors import BadInput
from .dependencies import BodyLimit, Limits, bearer
from .routes import page, predictions, slides, torchserve
from .schemas import refusals
from .server import Server

__all__ = ["Limits", "check_host", "create_app", "serve"]


def create_app(run_dirs: list[Path], *, device: str = "auto", token: str | None = None,
               limits: Limits = Limits(), backend: str = "auto", log=print) -> FastAPI:
    """Load every run (failing early with a clear error) and build the application. `backend`: the histology
    models' inference backend (auto: chosen per request or slide job, measured; backends.py)."""
    server = Server(run_dirs, device, limits, log, backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if server.closed:  # started again after a shutdown
            server.start()
        yield
        server.close()

    app = FastAPI(title="Spotter", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tumour in histopathology patches and disaster tweets: predictions with explanations.")
    app.state.server = server
    guarded = [Depends(bearer(token))]
    for group in (predictions, slides, torchserve):
        app.include_router(group.router, dependencies=guarded, responses=refusals(401))
    page.add_page(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        # FastAPI's own answer, in ASCII: its errors echo the input, which may hold what UTF-8 cannot encode
        # (a lone surrogate), and that answer failed with a 500
        body = json.dumps({"detail": jsonable_encoder(err.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log(f"error on {request.method} {request.url.path}: {type(err).__name__}: {err}")
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes)
    return app


# ---------------------------------------------------------------- running it

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_host(host: str, token: str | None) -> None:
    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise BadInput(f"refusing to listen on {host} without --token: anyone who can reach it could use the "
                         "models; give --token SECRET (clients send 'Authorization: Bearer SECRET')")


def serve(run_dirs: list[Path], *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str = "auto", limits: Limits = Limits(), backend: str = "auto") -> None:
    import uvicorn  # the server's own dependency, needed only to listen

    check_host(host, token)
    app = create_app(run_dirs, device=device, token=token, limits=limits, backend=backend)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(run_dirs)} model(s) on http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
