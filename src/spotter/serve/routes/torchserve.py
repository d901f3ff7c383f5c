"""TorchServe's names for the same predictions, so its clients work unchanged."""
from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request

from ..schemas import PatchAnswer, Ping, TweetsAnswer, TweetsRequest, refusals
from . import ServerDep
from .predictions import PATCH_FORM

router = APIRouter()

# A tweets model takes the JSON of /api/tweets/{model}/predict, a histology model the form of /api/histo/...
EITHER = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/TweetsRequest"}},
    **PATCH_FORM["requestBody"]["content"]}}}
ANSWER = dict(response_model=PatchAnswer | TweetsAnswer, response_model_exclude_unset=True, openapi_extra=EITHER,
              responses=refusals(400, 404, 413, 415, 422))


@router.get("/ping", response_model=Ping)
async def ping() -> dict:
    return {"status": "Healthy"}


async def _answer(model: str, request: Request, server, explain_it: bool) -> dict:
    if server.served(model).task == "tweets":
        try:
            body = TweetsRequest(**{**json.loads(await request.body()), **({"explain": True} if explain_it else {})})
        except (ValueError, TypeError) as err:
            raise HTTPException(422, f"expected {{\"texts\": [...]}}: {str(err)[:300]}") from None
        return await server.predict_tweets(model, body)
    return await server.predict_patches(model, request, explain_it)


@router.post("/predictions/{model}", **ANSWER)
async def predictions(model: str, request: Request, server: ServerDep) -> dict:
    return await _answer(model, request, server, False)


@router.post("/explanations/{model}", **ANSWER)
async def explanations(model: str, request: Request, server: ServerDep) -> dict:
    return await _answer(model, request, server, True)
