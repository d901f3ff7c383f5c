"""Whole-slide jobs: each upload is saved under a job folder of the server's own and scored on one
slides thread, so a slide never competes with another for the cores; callers poll its status."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SLIDE_OUTPUTS = ("overlay.png", "heatmap.png", "tissue.png", "tiles.geojson", "regions.geojson", "tiles.csv",
                 "slide.json")


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

    def output(self, name: str) -> Path:
        return self.folder / "out" / name

    def status_answer(self) -> dict:
        """What GET /api/jobs/{id} answers."""
        out = {"job": self.id, "model": self.model, "status": self.status, "progress": round(self.progress, 4),
               "message": self.message, "seconds": round(time.time() - self.started, 1)}
        if self.status == "done":
            out["summary"] = json.loads(json.dumps(self.summary, default=str)) if self.summary is not None else None
            out["files"] = {name: f"/api/jobs/{self.id}/files/{name}" for name in SLIDE_OUTPUTS
                            if self.output(name).exists()}
        return out


class JobStore:
    """The jobs, their folders (under one temporary folder, removed on close) and the slides thread."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.root = Path(tempfile.mkdtemp(prefix="spotter-serve-"))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="slides")

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def start(self, model: str, data: bytes, kind: str, score) -> Job:
        """Save an uploaded slide under a new job folder and queue `score(image, out, on_progress)`,
        which returns the slide's summary."""
        job = Job(uuid.uuid4().hex[:16], model, self.root / uuid.uuid4().hex)
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
                job.summary = score(image, job.folder / "out", progress)
                job.status, job.progress = "done", 1.0
            except Exception as err:  # noqa: BLE001 - reported through the job
                job.status, job.message = "failed", str(err)[:500]

        self.executor.submit(work)
        return job

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)  # the slides' uploads and outputs
