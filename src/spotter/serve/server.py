"""The served runs: each loaded once behind a batcher, the threads that run them, and the slide jobs.
Routes call these methods; they raise `HTTPException` with the 4xx a caller can act on."""
from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException, Request

from .. import explain
from ..errors import BadInput, UserError
from ..histo import images, predictor as histo_predictor, slide
from . import runs
from .batcher import Batcher
from .dependencies import Limits, flag, require_multipart
from .info import model_info
from .jobs import Job, JobStore, slide_tiles
from .schemas import TweetsRequest


@dataclass
class Served:
    name: str
    task: str
    run_dir: Path
    predictor: Any
    batcher: Batcher
    info: dict
    # Held by every use of the model, forward passes and explanations alike: Grad-CAM and integrated
    # gradients install hooks on the module and switch its modes, which a forward pass on another thread
    # would see (issue 27: mixed requests answered 500 or wrong probabilities).
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Slide jobs score on their own thread with their own copy of the model (loaded on the first slide), so that
    # they never wait for, nor see the hooks of, the requests that hold `lock`.
    slide_predictor: Any = None


class Server:
    """The loaded runs (each behind a batcher), the threads that run them, and the whole-slide jobs."""

    def __init__(self, run_dirs: list[Path], device: str, limits: Limits, log, backend: str = "auto"):
        self.models: dict[str, Served] = {}
        self.limits, self.device, self.backend = limits, device, backend
        self.loading = threading.Lock()  # slide predictors are loaded once, on the first slide
        self.start()
        for run_dir in map(Path, run_dirs):
            self.load(run_dir, device, log)

    def load(self, run_dir: Path, device: str, log) -> None:
        name = run_dir.resolve().name
        if name in self.models:
            raise BadInput(f"two runs are named {name!r} ({self.models[name].run_dir} and {run_dir}); "
                           "give each a folder of its own name")
        task, predictor = runs.load_model(run_dir, device, self.backend)
        lock = threading.Lock()

        def batch_fn(items, key):
            with lock:
                if task == "histo":
                    return predictor.predict_proba(items, tta=key)
                return predictor.predict_proba([t for t, _ in items], [k for _, k in items])
        batcher = Batcher(batch_fn, self.inference, max_batch=self.limits.max_batch,
                          max_wait=self.limits.max_wait_ms / 1000)
        self.models[name] = Served(name, task, run_dir, predictor, batcher,
                                   model_info(name, task, predictor.run, predictor), lock)
        log(f"loaded {task} model {name!r} ({predictor.name}) from {run_dir}")

    def start(self) -> None:
        """The threads and the job store; `close` ends them, and an application started again (as tests
        do, one lifespan after another) gets new ones."""
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.explaining = ThreadPoolExecutor(1, thread_name_prefix="explain")
        self.jobs = JobStore(self.limits.max_jobs, self.limits.job_ttl_s)
        for served in self.models.values():
            served.batcher.executor = self.inference
        self.closed = False

    def close(self) -> None:
        for served in self.models.values():
            served.batcher.close()
        self.inference.shutdown(cancel_futures=True)
        self.explaining.shutdown(cancel_futures=True)
        self.jobs.close()
        self.closed = True

    @staticmethod
    def model_info(m: Served) -> dict:
        """What /api/models shows: the run's fixed facts, and the backends chosen so far (patches, then slides)."""
        if m.task != "histo":
            return m.info
        chosen = [p.describe()["backend"] for p in (m.predictor, m.slide_predictor) if p is not None]
        return {**m.info, "backend": [record for records in chosen for record in records]}

    def served(self, name: str, task: str | None = None) -> Served:
        if name not in self.models:
            raise HTTPException(404, f"no model named {name!r}; this server has: {', '.join(self.models) or 'none'}")
        if task and self.models[name].task != task:
            raise HTTPException(404, f"{name!r} is a {self.models[name].task} model, not a {task} one")
        return self.models[name]

    # ---------------------------------------------------------------- patches

    async def read_patches(self, request: Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        require_multipart(request, "the patches", "files")
        async with request.form(max_files=self.limits.max_files + 1, max_fields=16) as form:  # closed however it ends
            files = [(f.filename or f"file{i + 1}", await f.read()) for i, f in enumerate(form.getlist("files"))
                     if not isinstance(f, str)]
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
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
                decoded.append(images.decode_patch(data, name, self.limits.max_patch_pixels))
            except images.UploadError as err:
                raise HTTPException(err.status, str(err)) from None
        pixels = np.stack([p for p, _ in decoded])
        try:
            m.predictor.check_tta(tta)
        except UserError as err:  # a TTA-calibrated ensemble asked without TTA, or the other way round
            raise HTTPException(422, str(err)) from None
        probs = await m.batcher.submit(pixels, tta)
        results = [{"name": name, "probability": float(p), "label": int(p >= m.predictor.threshold),
                    **({"note": note} if note else {})}
                   for (name, _), (_, note), p in zip(files, decoded, probs)]
        if thumbnails:  # browsers do not show TIFF: the page gets the patch as PNG
            for r, px in zip(results, pixels):
                r["thumbnail_png"] = base64.b64encode(images.encode_png(px)).decode()
        if want_cam:
            def explanations() -> list[dict]:  # maps and PNGs off the event loop
                crop = getattr(getattr(m.predictor, "settings", None), "crop", None)
                with m.lock:
                    cams = m.predictor.grad_cam(pixels)
                return [{"method": "Grad-CAM, last convolutional stage, logit units", "crop": crop,
                         "overlay_png": base64.b64encode(explain.overlay_png(px, cam, float(p))).decode(),
                         "max_logit": float(cam.max()),
                         "centre_share": float(cam[32:64, 32:64].sum() / max(cam.sum(), 1e-12))}
                        for px, cam, p in zip(pixels, cams, probs)]
            for r, e in zip(results, await asyncio.get_running_loop().run_in_executor(self.explaining, explanations)):
                r["explanation"] = e
        return {"model": model, "threshold": m.predictor.threshold, "tta": tta, "results": results}

    # ---------------------------------------------------------------- tweets

    async def predict_tweets(self, model: str, body: TweetsRequest) -> dict:
        m = self.served(model, "tweets")
        keywords = body.keywords or [""] * len(body.texts)
        probs = await m.batcher.submit(list(zip(body.texts, keywords)))
        results = [{"text": t, "keyword": k, "probability": float(p), "label": int(p >= m.predictor.threshold)}
                   for t, k, p in zip(body.texts, keywords, probs)]
        if body.explain:
            try:
                parts = await asyncio.get_running_loop().run_in_executor(
                    self.explaining, self._explain_tweets, m, body.texts, keywords)
            except explain.NotExplainable as err:
                raise HTTPException(422, str(err)) from None
            for r, e in zip(results, parts):
                r["explanation"] = e
        return {"model": model, "threshold": m.predictor.threshold, "results": results}

    @staticmethod
    def _explain_tweets(m: Served, texts: list[str], keywords: list[str]) -> list[dict]:
        with m.lock:
            return m.predictor.explain(texts, keywords)

    # ---------------------------------------------------------------- slides

    async def start_slide(self, m: Served, data: bytes, kind: str, options: dict) -> Job:
        """Size an uploaded slide, refuse it beyond the limits, else queue it. The job scores with the server's
        device and a model loaded once per run."""
        if self.jobs.unfinished() >= self.limits.max_jobs:
            raise HTTPException(429, f"{self.limits.max_jobs} slide jobs are queued or running, this server's "
                                     "limit (--max-jobs); try again when one has finished")
        options.setdefault("stride", slide.CENTRE)  # the stage's default: one cell per labelled centre
        job, image = self.jobs.new(m.name, data, kind)
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(
                None, self._size_slide, m, image, kind, data, options)
        except BaseException:
            self.jobs.discard(job)
            raise

        def score(image: Path, out: Path, on_progress) -> dict:
            return slide.slide(m.run_dir, image, out, predictor=predictor, on_progress=on_progress, **options)
        return self.jobs.queue(job, image, score)

    def _size_slide(self, m: Served, image: Path, kind: str, data: bytes, options: dict):
        """The slide predictor, after checking the job's size in tiles and its µm/px (413/422 with the reason)."""
        with self.loading:
            if m.slide_predictor is None:
                m.slide_predictor = runs.never_measuring(histo_predictor.load_run(m.predictor.run, self.device,
                                                                                   backend=self.backend))
        model_mpp, limits = m.slide_predictor.mpp, self.limits
        size = images.slide_size(data, image.name, limits.max_slide_pixels) if kind != "tiff" else None
        try:
            tiles, mpp = slide_tiles(image, kind, size, options.get("mpp"), options["stride"], model_mpp,
                                     slide.make_grid)
        except UserError as err:
            raise HTTPException(422, str(err).replace(str(image), "the slide")) from None
        if mpp > limits.max_slide_upsample * model_mpp:
            raise HTTPException(422, f"mpp {mpp:g}: the slide's level 0 would be enlarged {mpp / model_mpp:.1f}x to "
                                     f"the model's {model_mpp:g} µm per pixel, more than this server's "
                                     f"{limits.max_slide_upsample:g}x; check the slide's µm per pixel")
        if tiles > limits.max_slide_tiles:
            raise HTTPException(413, f"{tiles:,} tiles at stride {options['stride']} ({mpp:g} µm per pixel), over "
                                     f"this server's cap of {limits.max_slide_tiles:,} (--max-slide-tiles); "
                                     "use a larger stride")
        return m.slide_predictor

    def cancel_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r}")
        self.jobs.cancel(job)
        return job
