"""Whole slides, as jobs: upload, then poll for progress and the outputs."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from ...histo import images
from ..dependencies import require_multipart
from ..jobs import SLIDE_OUTPUTS
from ..schemas import JobStarted, JobStatus, refusals
from . import ServerDep

router = APIRouter()

SLIDE_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
    "file": {"type": "string", "format": "binary"},
    "mpp": {"type": "number", "description": "µm per pixel, when the file does not say"},
    "stride": {"type": "integer", "description": "model pixels between patch centres (32 or 96)"}}}}}}}


@router.post("/api/histo/{model}/slides", status_code=202, response_model=JobStarted, openapi_extra=SLIDE_FORM,
             responses=refusals(400, 404, 413, 415, 422, 429))
async def start_slide(model: str, request: Request, server: ServerDep) -> dict:
    """Start whole-slide inference on an uploaded slide or large image; poll /api/jobs/{id}."""
    m = server.served(model, "histo")
    require_multipart(request, "the slide", "file")
    async with request.form(max_files=2, max_fields=4) as form:  # closed however it ends
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
    try:
        kind = images.check_slide(data, upload.filename or "slide", server.limits.max_slide_pixels,
                                   server.limits.max_image_slide_pixels)
    except images.UploadError as err:
        raise HTTPException(err.status, str(err)) from None
    job = await server.start_slide(m, data, kind, options)
    return {"job": job.id, "status_url": f"/api/jobs/{job.id}"}


@router.get("/api/jobs/{job_id}", response_model=JobStatus, response_model_exclude_unset=True,
            responses=refusals(404))
async def job_status(job_id: str, server: ServerDep) -> dict:
    job = server.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id[:40]!r}")
    return job.status_answer()


@router.delete("/api/jobs/{job_id}", response_model=JobStatus, response_model_exclude_unset=True,
               responses=refusals(404))
async def cancel_job(job_id: str, server: ServerDep) -> dict:
    """Cancel a job: a queued one never starts, a running one stops at its next batch of tiles;
    a finished one is deleted. Its files go."""
    return server.cancel_job(job_id).status_answer()


# Each output's type, said in the schema (a download is not JSON) and sent whatever the system's MIME tables hold.
MEDIA_TYPES = {".png": "image/png", ".geojson": "application/geo+json", ".csv": "text/csv", ".json": "application/json"}
OUTPUT_CONTENT = {t: {"schema": {"type": "object"} if t.endswith("json") else {"type": "string", "format": "binary"}}
                  for t in MEDIA_TYPES.values()}


@router.get("/api/jobs/{job_id}/files/{name}", response_class=FileResponse,
            responses={200: {"description": "the output", "content": OUTPUT_CONTENT}, **refusals(404)})
async def job_file(job_id: str, name: str, server: ServerDep) -> FileResponse:
    job = server.jobs.get(job_id)
    if job is None or job.status != "done" or name not in SLIDE_OUTPUTS or not job.output(name).exists():
        raise HTTPException(404, "no such output")
    return FileResponse(job.output(name), filename=name, media_type=MEDIA_TYPES[Path(name).suffix])
