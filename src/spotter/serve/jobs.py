"""Whole-slide jobs: each upload is saved under a job folder of the server's own and scored on one
slides thread, so a slide never competes with another for the cores; callers poll its status.

Jobs are bounded (issue 27): a slide's size in tiles is known before it is accepted (`slide_tiles`), the
queue holds at most `max_jobs` unfinished jobs, a job can be cancelled (it stops at its next batch of
tiles), and a finished job and its folder are removed `ttl_s` seconds after it ends.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..histo import wsi

SLIDE_OUTPUTS = ("overlay.png", "heatmap.png", "tissue.png", "tiles.geojson", "regions.geojson", "tiles.csv",
                 "slide.json")
UNFINISHED = ("queued", "running")


class Cancelled(Exception):
    """Raised from a job's progress callback once it is cancelled: the slide stage stops at that batch."""


@dataclass
class Job:
    id: str
    model: str
    folder: Path
    status: str = "queued"  # queued, running, done, failed, cancelled
    progress: float = 0.0
    message: str = ""
    summary: dict | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None  # time.time() when it ended; it expires ttl_s later
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def output(self, name: str) -> Path:
        return self.folder / "out" / name

    def status_answer(self) -> dict:
        """What GET /api/jobs/{id} answers."""
        out = {"job": self.id, "model": self.model, "status": self.status, "progress": round(self.progress, 4),
               "message": self.message, "seconds": round((self.finished or time.time()) - self.started, 1)}
        if self.status == "done":
            out["summary"] = json.loads(json.dumps(self.summary, default=str)) if self.summary is not None else None
            out["files"] = {name: f"/api/jobs/{self.id}/files/{name}" for name in SLIDE_OUTPUTS
                            if self.output(name).exists()}
        return out


def slide_tiles(image: Path, kind: str, size: tuple[int, int] | None, mpp: float | None, stride: int,
                model_mpp: float, make_grid: Callable) -> tuple[int, float]:
    """(cells of the slide's grid at `stride`: the most tiles a job can score, the slide's µm/px) without
    decoding pixels. TIFFs are opened lazily for their levels and µm/px; PNG/JPEG sizes come from the header
    (their µm/px must be given: their resolution tags hold screen DPI)."""
    if kind == "tiff":
        source = wsi.open_slide(image, mpp)
    elif mpp is None:
        raise wsi.SlideError(f"{image.name}: a PNG or JPEG does not say how many µm a pixel is; send mpp "
                             "(for example 0.25 for a 40x scan, 0.5 for 20x)")
    else:
        if not wsi.MPP_RANGE[0] <= mpp <= wsi.MPP_RANGE[1]:
            wsi.open_slide(image, mpp)  # raises its own message about the range, before any decoding
        source = wsi.Slide(image, [size], [1.0], float(mpp), "--mpp")
    try:
        grid = make_grid(source, model_mpp, stride)
        return grid.rows * grid.cols, source.mpp
    finally:
        if kind == "tiff":
            source.close()


def without_paths(message: str, job: Job) -> str:
    """A failed job's message as a caller sees it: the job folder (a server path) is the slide's name only."""
    for folder in {str(job.folder.resolve()), str(job.folder)}:
        message = message.replace(folder + "/", "").replace(folder, "the job")
    return message


def public_summary(job: Job, summary: dict) -> dict:
    """A done job's summary without the server's paths (issue 28: the run folder and the job folder were in the
    status answer and in the slide.json a caller downloads): the model's name and the slide's stand in for them."""
    shown = {**summary, "run": job.model, "file": Path(summary.get("file", "slide")).name}
    if job.output("slide.json").exists():
        job.output("slide.json").write_text(json.dumps(shown, indent=2, default=str))
    return shown


class JobStore:
    """The jobs, their folders (under one temporary folder, removed on close) and the slides thread."""

    def __init__(self, max_jobs: int = 4, ttl_s: float = 3600.0):
        self.jobs: dict[str, Job] = {}
        self.max_jobs, self.ttl_s = max_jobs, ttl_s
        self.root = Path(tempfile.mkdtemp(prefix="spotter-serve-"))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="slides")

    def get(self, job_id: str) -> Job | None:
        self.expire()
        return self.jobs.get(job_id)

    def unfinished(self) -> int:
        return sum(job.status in UNFINISHED for job in self.jobs.values())

    def new(self, model: str, data: bytes, kind: str) -> tuple[Job, Path]:
        """A job folder holding the uploaded slide (under our name, never the caller's); not yet queued."""
        self.expire()
        job = Job(uuid.uuid4().hex[:16], model, self.root / uuid.uuid4().hex)
        job.folder.mkdir(parents=True)
        image = job.folder / f"slide.{ {'jpeg': 'jpg'}.get(kind, kind) }"
        image.write_bytes(data)
        return job, image

    def discard(self, job: Job) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)

    def queue(self, job: Job, image: Path, score) -> Job:
        """Queue `score(image, out, on_progress)`, which returns the slide's summary."""
        def progress(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise Cancelled()
            job.progress = min(1.0, done / total) if total else 0.0

        def work() -> None:
            if job.cancel.is_set():
                return self._end(job, "cancelled")
            job.status = "running"
            try:
                job.summary = public_summary(job, score(image, job.folder / "out", progress))
                job.progress = 1.0
                self._end(job, "done")
            except Cancelled:
                self._end(job, "cancelled")
            except Exception as err:  # noqa: BLE001 - reported through the job
                self._end(job, "failed", without_paths(str(err), job)[:500])

        self.jobs[job.id] = job
        self.executor.submit(work)
        return job

    def _end(self, job: Job, status: str, message: str = "") -> None:
        job.status, job.message, job.finished = status, message, time.time()
        if status == "cancelled":
            self.discard(job)  # nothing in it is worth keeping

    def cancel(self, job: Job) -> None:
        """Stop a job: a queued one never starts, a running one stops at its next batch of tiles; a finished
        one is deleted with its files."""
        job.cancel.set()
        if job.status == "queued":
            self._end(job, "cancelled")
        elif job.status not in UNFINISHED:
            self.discard(job)
            del self.jobs[job.id]
            job.status = "deleted"

    def expire(self) -> None:
        now = time.time()
        for job in [j for j in self.jobs.values() if j.finished is not None and now - j.finished > self.ttl_s]:
            self.discard(job)
            del self.jobs[job.id]

    def close(self) -> None:
        """Cancel every job, wait for the running one to stop (at its next batch) and remove all job folders:
        without this, Ctrl-C left the server running until the slide was done (issue 27 item 4)."""
        for job in list(self.jobs.values()):
            self.cancel(job)
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)  # the slides' uploads and outputs
