"""Health, the models, and predictions for patches and tweets."""
from __future__ import annotations


from fastapi import APIRouter, Request

from ... import explain
from ..schemas import Health, Models, PatchAnswer, TweetsAnswer, TweetsRequest, refusals
from . import ServerDep

router = APIRouter()

PATCH_FORM = {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "tta": {"type": "boolean"}, "explain": {"type": "boolean"}, "thumbnail": {"type": "boolean"}}}}}}}


@router.get("/api/health", response_model=Health)
async def health(server: ServerDep) -> dict:
    return {"status": "ok", "models": list(server.models), "limits": server.limits.shown()}


@router.get("/api/models", response_model=Models, response_model_exclude_unset=True)
async def list_models(server: ServerDep) -> dict:
    return {"models": [server.model_info(m) for m in server.models.values()], "cam_scale_logits": explain.CAM_SCALE,
            "slides": True,  # whole slides are always served (the page asks)
            "limits": server.limits.shown()}


@router.post("/api/histo/{model}/predict", response_model=PatchAnswer, response_model_exclude_unset=True,
             openapi_extra=PATCH_FORM, responses=refusals(400, 404, 413, 415, 422))
async def predict_patches(model: str, request: Request, server: ServerDep) -> dict:
    """Probability of tumour in the centre 32x32 of each patch (96x96; larger images: their centre 96x96)."""
    return await server.predict_patches(model, request)


@router.post("/api/tweets/{model}/predict", response_model=TweetsAnswer, response_model_exclude_unset=True,
             responses=refusals(400, 404, 413, 422))
async def predict_tweets(model: str, body: TweetsRequest, server: ServerDep) -> dict:
    """Probability that each tweet is about a real disaster, and the decision at the run's tuned threshold."""
    return await server.predict_tweets(model, body)
