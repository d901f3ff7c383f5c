"""TorchServe's names for the same predictions, so its clients work unchanged."""
from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request

from ..schemas import Ping, TweetsRequest
from . import ServerDep

router = APIRouter()


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


@router.post("/predictions/{model}")
async def predictions(model: str, request: Request, server: ServerDep) -> dict:
    return await _answer(model, request, server, False)


@router.post("/explanations/{model}")
async def explanations(model: str, request: Request, server: ServerDep) -> dict:
    return await _answer(model, request, server, True)
