"""The FastAPI application: every run given on the command line, loaded once, behind a JSON API and a page.

Routes (JSON in and out; errors are `{"detail": "..."}` with a 4xx code, never a stack trace):
  GET  /api/health, /api/models
  POST /api/histo/{model}/predict      multipart `files` (TIFF/PNG/JPEG), form or query `tta`, `explain`
  POST /api/tweets/{model}/predict     {"texts": [...], "keywords": [...]?, "explain": false}
  POST /api/histo/{model}/slides       multipart `file` -> {"job": id}
  GET  /api/jobs/{id}, /api/jobs/{id}/files/{name}
  GET  /ping, POST /predictions/{model}, POST /explanations/{model}   (TorchServe's names for the same)
  GET  /  the page (from the package), /docs the OpenAPI docs
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import importlib.util
import json
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints, model_validator

from .. import explain
from ..errors import BadInput
from . import runs, uploads
from .batcher import Batcher

STATIC = Path(__file__).parent / "static"
SLIDE_OUTPUTS = ("overlay.png", "heatmap.png", "tissue.png", "tiles.geojson", "regions.geojson", "tiles.csv",
                 "slide.json")


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

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class Served:
    name: str
    task: str
    run_dir: Path
    predictor: Any
    batcher: Batcher
    info: dict


@dataclass
class Job:
    id: str
    model: str
    folder: Path
    status: str = "queued"  # queued, running, done, failed
    progress: float = 0.0
    message: str = ""
    summary: dict | None = None
    started: float = field(default_factory=time.time)


# ---------------------------------------------------------------- requests and answers

Text = Annotated[str, StringConstraints(max_length=Limits.max_text_chars)]


class TweetsRequest(BaseModel):
    texts: list[Text] = Field(min_length=1, max_length=Limits.max_texts, description="the tweets")
    keywords: list[Annotated[str, StringConstraints(max_length=200)]] | None = Field(
        None, description="Kaggle's keyword column, one per text (optional)")
    explain: bool = Field(False, description="add word attributions")

    @model_validator(mode="after")
    def _same_length(self):
        if self.keywords is not None and len(self.keywords) != len(self.texts):
            raise ValueError(f"keywords has {len(self.keywords)} entries for {len(self.texts)} texts")
        return self


# ---------------------------------------------------------------- model information

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_info(name: str, task: str, run_dir: Path, predictor) -> dict:
    """What the model picker shows: task, kind, validation scores from the run folder, training settings."""
    ensemble = _read_json(run_dir / "ensemble.json")
    info: dict[str, Any] = {"name": name, "task": task, "kind": predictor.name, "threshold": predictor.threshold,
                            "ensemble": ensemble is not None, "validation": {}, "settings": {}}
    if ensemble:
        info["members"] = [Path(m).name for m in ensemble["members"]]
        v = ensemble.get("validation", {})
        info["validation"] = {k: v[k] for k in ("auc", "f1", "f1_best", "precision", "recall", "accuracy") if k in v}
    if task == "histo" and not ensemble:
        settings = _read_json(run_dir / "settings.json") or {}
        info["settings"] = {**settings.get("task", {}).get("histo", {}), **settings.get("train", {})}
        for file, key in (("evaluation_tta.json", "tta"), ("evaluation.json", "plain")):
            report = _read_json(run_dir / file)
            if report and "validation split" in str(report.get("data", "")):
                info["validation"][f"auc_{key}"] = report["auc"]
        if (run_dir / "metrics.csv").exists():
            metrics = pd.read_csv(run_dir / "metrics.csv")
            best = metrics.loc[metrics["val_auc"].idxmax()]
            info["validation"].setdefault("auc", float(best["val_auc"]))
            info["validation"]["best_epoch"] = int(best["epoch"])
        info["explanation"] = "Grad-CAM"
    elif task == "histo":
        info["explanation"] = "Grad-CAM (mean of the members' maps)"
    if task == "tweets":
        summary = _read_json(run_dir / "summary.json") or {}
        # Runs score out-of-fold F1 at thresholds chosen without the scored fold, with 95 % intervals;
        # ensembles (and runs made before that) keep their scores under "validation".
        v = summary.get("validation", summary)
        info["validation"].update({k: v[k] for k in ("f1", "auc", "precision", "recall", "f1_ci95", "auc_ci95")
                                   if k in v})
        if "f1_mean" in summary:
            info["validation"].update(f1_mean=summary["f1_mean"], f1_std=summary["f1_std"], folds=summary["folds"])
        run = _read_json(run_dir / "run.json") or {}
        info["settings"] = {**{k: v for k, v in run.get("tweets", {}).items() if k != "normalise"},
                            **run.get("train", {})}
        info["explanation"] = {"tfidf": "exact contributions", "minilm-frozen": None, "ensemble": None,
                               "blend": "integrated gradients and exact contributions, averaged"}.get(
            predictor.name, "integrated gradients")
    for private in ("data", "pack_root", "embeddings"):  # paths on the server: not for callers
        info["settings"].pop(private, None)
    return info


# ---------------------------------------------------------------- what the routes share

class Server:
    """The loaded runs (each behind a batcher), the threads that run them, and the whole-slide jobs."""

    def __init__(self, run_dirs: list[Path], device: str, limits: Limits, log):
        self.models: dict[str, Served] = {}
        self.limits = limits
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.explaining = ThreadPoolExecutor(1, thread_name_prefix="explain")
        self.slides = ThreadPoolExecutor(1, thread_name_prefix="slides")
        for run_dir in map(Path, run_dirs):
            self.load(run_dir, device, log)
        self.jobs: dict[str, Job] = {}
        self.jobs_root = Path(tempfile.mkdtemp(prefix="spotter-serve-"))

    def load(self, run_dir: Path, device: str, log) -> None:
        name = run_dir.resolve().name
        if name in self.models:
            raise BadInput(f"two runs are named {name!r} ({self.models[name].run_dir} and {run_dir}); "
                           "give each a folder of its own name")
        task, predictor = runs.load_model(run_dir, device)
        if task == "histo":
            batch_fn = lambda pixels, tta, p=predictor: p.predict_proba(pixels, tta=tta)  # noqa: E731
        else:
            batch_fn = lambda pairs, _, p=predictor: p.predict_proba([t for t, _ in pairs],  # noqa: E731
                                                                     [k for _, k in pairs])
        batcher = Batcher(batch_fn, self.inference, max_batch=self.limits.max_batch,
                          max_wait=self.limits.max_wait_ms / 1000)
        self.models[name] = Served(name, task, run_dir, predictor, batcher,
                                   model_info(name, task, run_dir, predictor))
        log(f"loaded {task} model {name!r} ({predictor.name}) from {run_dir}")

    def close(self) -> None:
        for served in self.models.values():
            served.batcher.close()
        shutil.rmtree(self.jobs_root, ignore_errors=True)  # the slides' uploads and outputs

    def served(self, name: str, task: str | None = None) -> Served:
        if name not in self.models:
            raise HTTPException(404, f"no model named {name!r}; this server has: {', '.join(self.models) or 'none'}")
        if task and self.models[name].task != task:
            raise HTTPException(404, f"{name!r} is a {self.models[name].task} model, not a {task} one")
        return self.models[name]

    async def read_patches(self, request: Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        require_multipart(request, "the patches", "files")
        form = await request.form(max_files=self.limits.max_files + 1, max_fields=16)
        files = [(f.filename or f"file{i + 1}", await f.read()) for i, f in enumerate(form.getlist("files"))
                 if not isinstance(f, str)]
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        if not files:
            raise HTTPException(422, "no files: send one or more patch images in the multipart field 'files'")
        if len(files) > self.limits.max_files:
            raise HTTPException(422, f"at most {self.limits.max_files} patches per request")
        return files, fields

    async def predict_patches(self, model: str, request: Request, always_explain: bool = False) -> dict:
        m = self.served(model, "histo")
        files, fields = await self.read_patches(request)
        tta, want_cam = flag("tta", request, fields), always_explain or flag("explain", request, fields)
        thumbnails = flag("thumbnail", request, fields)
        decoded = []
        for name, data in files:
            try:
                decoded.append(uploads.decode_patch(data, name, self.limits.max_patch_pixels))
            except uploads.UploadError as err:
                raise HTTPException(err.status, str(err)) from None
        pixels = np.stack([p for p, _ in decoded])
        probs = await m.batcher.submit(pixels, tta)
        results = [{"name": name, "probability": float(p), "label": int(p >= m.predictor.threshold),
                    **({"note": note} if note else {})}
                   for (name, _), (_, note), p in zip(files, decoded, probs)]
        if thumbnails:  # browsers do not show TIFF: the page gets the patch as PNG
            for r, px in zip(results, pixels):
                r["thumbnail_png"] = base64.b64encode(uploads.encode_png(px)).decode()
        if want_cam:
            def explanations() -> list[dict]:  # maps and PNGs off the event loop
                crop = getattr(getattr(m.predictor, "settings", None), "crop", None)
                return [{"method": "Grad-CAM, last convolutional stage, logit units", "crop": crop,
                         "overlay_png": base64.b64encode(explain.overlay_png(px, cam, float(p))).decode(),
                         "max_logit": float(cam.max()),
                         "centre_share": float(cam[32:64, 32:64].sum() / max(cam.sum(), 1e-12))}
                        for px, cam, p in zip(pixels, m.predictor.grad_cam(pixels), probs)]
            for r, e in zip(results, await asyncio.get_running_loop().run_in_executor(self.explaining, explanations)):
                r["explanation"] = e
        return {"model": model, "threshold": m.predictor.threshold, "tta": tta, "results": results}

    async def predict_tweets(self, model: str, body: TweetsRequest) -> dict:
        m = self.served(model, "tweets")
        keywords = body.keywords or [""] * len(body.texts)
        probs = await m.batcher.submit(list(zip(body.texts, keywords)))
        results = [{"text": t, "keyword": k, "probability": float(p), "label": int(p >= m.predictor.threshold)}
                   for t, k, p in zip(body.texts, keywords, probs)]
        if body.explain:
            try:
                parts = await asyncio.get_running_loop().run_in_executor(
                    self.explaining, m.predictor.explain, body.texts, keywords)
            except explain.NotExplainable as err:
                raise HTTPException(422, str(err)) from None
            for r, e in zip(results, parts):
                r["explanation"] = e
        return {"model": model, "threshold": m.predictor.threshold, "results": results}

    def start_slide(self, m: Served, data: bytes, kind: str, options: dict) -> Job:
        """Save an uploaded slide under a job folder and queue its inference on the slides thread."""
        from ..histo.slide import slide as run_slide

        job = Job(uuid.uuid4().hex[:16], m.name, self.jobs_root / uuid.uuid4().hex)
        job.folder.mkdir(parents=True)
        image = job.folder / f"slide.{ {'jpeg': 'jpg'}.get(kind, kind) }"  # our name, never the caller's
        image.write_bytes(data)
        self.jobs[job.id] = job

        def progress(*args) -> None:
            numbers = [a for a in args if isinstance(a, (int, float))]
            if len(numbers) >= 2 and numbers[1]:
                job.progress = min(1.0, numbers[0] / numbers[1])
            elif numbers:
                job.progress = min(1.0, float(numbers[0]))

        def work() -> None:
            job.status = "running"
            try:
                job.summary = run_slide(m.run_dir, image, job.folder / "out", on_progress=progress, **options)
                job.status, job.progress = "done", 1.0
            except Exception as err:  # noqa: BLE001 - reported through the job
                job.status, job.message = "failed", str(err)[:500]

        self.slides.submit(work)
        return job


def require_multipart(request: Request, what: str, field_name: str) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, f"send {what} as multipart/form-data, field '{field_name}'")


def flag(name: str, request: Request, fields: dict[str, str]) -> bool:
    """A true/false option from the form or the query string (422 for anything else)."""
    value = fields.get(name, request.query_params.get(name, "false")).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        raise HTTPException(422, f"{name} must be true or false, got {value[:20]!r}")
    return value in ("true", "1", "yes", "on")


# ---------------------------------------------------------------- the application

def create_app(run_dirs: list[Path], *, device: str = "auto", token: str | None = None,
               limits: Limits = Limits(), log=print) -> FastAPI:
    """Load every run (failing early with a clear error) and build the application."""
    server = Server(run_dirs, device, limits, log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.close()

    app = FastAPI(title="Spotter", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tumour in histopathology patches and disaster tweets: predictions with explanations.")
    app.state.server = server
    api = APIRouter(dependencies=[Depends(bearer(token))])
    for add_routes in (prediction_routes, slide_routes, torchserve_routes):
        add_routes(api, server)
    app.include_router(api)
    page_routes(app)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log(f"error on {request.method} {request.url.path}: {type(err).__name__}: {err}")
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes)
    return app


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


def prediction_routes(api: APIRouter, server: Server) -> None:
    limits = server.limits

    @api.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "models": list(server.models)}

    @api.get("/api/models")
    async def list_models() -> dict:
        return {"models": [m.info for m in server.models.values()], "cam_scale_logits": explain.CAM_SCALE,
                "slides": importlib.util.find_spec("spotter.histo.slide") is not None,
                "limits": {k: getattr(limits, k) for k in ("max_upload_mb", "max_files", "max_texts",
                                                           "max_text_chars")}}

    @api.post("/api/histo/{model}/predict", openapi_extra={"requestBody": {"content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "tta": {"type": "boolean"}, "explain": {"type": "boolean"},
            "thumbnail": {"type": "boolean"}}}}}}})
    async def predict_patches(model: str, request: Request) -> dict:
        """Probability of tumour in the centre 32x32 of each patch (96x96; larger images: their centre 96x96)."""
        return await server.predict_patches(model, request)

    @api.post("/api/tweets/{model}/predict")
    async def predict_tweets(model: str, body: TweetsRequest) -> dict:
        """Probability that each tweet is about a real disaster, and the decision at the run's tuned threshold."""
        return await server.predict_tweets(model, body)


def slide_routes(api: APIRouter, server: Server) -> None:
    """Whole slides, as jobs: upload, then poll for progress and the outputs."""

    @api.post("/api/histo/{model}/slides", status_code=202, openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"},
            "mpp": {"type": "number", "description": "µm per pixel, when the file does not say"},
            "stride": {"type": "integer", "description": "model pixels between patch centres (32 or 96)"}}}}}}})
    async def start_slide(model: str, request: Request) -> dict:
        """Start whole-slide inference on an uploaded slide or large image; poll /api/jobs/{id}."""
        m = server.served(model, "histo")
        require_multipart(request, "the slide", "file")
        form = await request.form(max_files=2, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "no file: send the slide in the multipart field 'file'")
        options = {}  # passed on only when given: the slide stage has its own defaults
        for key, kind_of in (("mpp", float), ("stride", int)):
            value = form.get(key)
            if isinstance(value, str) and value.strip():
                try:
                    options[key] = kind_of(value)
                except ValueError:
                    raise HTTPException(422, f"{key} must be a number, got {value[:20]!r}") from None
        data = await upload.read()
        await form.close()
        try:
            kind = uploads.check_slide(data, upload.filename or "slide", server.limits.max_slide_pixels)
        except uploads.UploadError as err:
            raise HTTPException(err.status, str(err)) from None
        try:  # the whole-slide stage is its own module; bad uploads are refused before this
            job = server.start_slide(m, data, kind, options)
        except ImportError:
            raise HTTPException(501, "whole-slide inference is not in this Spotter yet (spotter.histo.slide)") from None
        return {"job": job.id, "status_url": f"/api/jobs/{job.id}"}

    @api.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> dict:
        job = server.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r}")
        out = {"job": job.id, "model": job.model, "status": job.status, "progress": round(job.progress, 4),
               "message": job.message, "seconds": round(time.time() - job.started, 1)}
        if job.status == "done":
            out["summary"] = json.loads(json.dumps(job.summary, default=str)) if job.summary is not None else None
            out["files"] = {name: f"/api/jobs/{job.id}/files/{name}" for name in SLIDE_OUTPUTS
                            if (job.folder / "out" / name).exists()}
        return out

    @api.get("/api/jobs/{job_id}/files/{name}")
    async def job_file(job_id: str, name: str) -> FileResponse:
        job = server.jobs.get(job_id)
        if job is None or job.status != "done" or name not in SLIDE_OUTPUTS or not (job.folder / "out" / name).exists():
            raise HTTPException(404, "no such output")
        return FileResponse(job.folder / "out" / name, filename=name)


def torchserve_routes(api: APIRouter, server: Server) -> None:
    """TorchServe's names for the same predictions, so its clients work unchanged."""

    @api.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    async def torchserve(model: str, request: Request, explain_it: bool) -> dict:
        if server.served(model).task == "tweets":
            try:
                body = TweetsRequest(**{**json.loads(await request.body()), **({"explain": True} if explain_it else {})})
            except (ValueError, TypeError) as err:
                raise HTTPException(422, f"expected {{\"texts\": [...]}}: {str(err)[:300]}") from None
            return await server.predict_tweets(model, body)
        return await server.predict_patches(model, request, explain_it)

    @api.post("/predictions/{model}")
    async def predictions(model: str, request: Request) -> dict:
        return await torchserve(model, request, False)

    @api.post("/explanations/{model}")
    async def explanations(model: str, request: Request) -> dict:
        return await torchserve(model, request, True)


def page_routes(app: FastAPI) -> None:
    """The page, its colour legend, and the API docs with Swagger UI from a package, not a CDN (offline too)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/cam-legend.png", include_in_schema=False)
    async def legend() -> Response:
        return Response(explain.colour_scale_png(), media_type="image/png")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Spotter API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


# ---------------------------------------------------------------- request size cap

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


# ---------------------------------------------------------------- running it

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_host(host: str, token: str | None) -> None:
    import ipaddress

    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise BadInput(f"refusing to listen on {host} without --token: anyone who can reach it could use the "
                         "models; give --token SECRET (clients send 'Authorization: Bearer SECRET')")


def serve(run_dirs: list[Path], *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str = "auto", limits: Limits = Limits()) -> None:
    import uvicorn

    check_host(host, token)
    app = create_app(run_dirs, device=device, token=token, limits=limits)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(run_dirs)} model(s) on http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
