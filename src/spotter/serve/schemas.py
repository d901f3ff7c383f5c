"""The API's requests and answers as pydantic models, so /docs and /openapi.json show real schemas.

Answers are built as plain dicts by the server and checked against these on the way out; routes use
`response_model_exclude_unset`, so an optional field the server did not set (a patch's `note`, its
`thumbnail_png`, `explanation`) is left out of the JSON rather than sent as null.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, model_validator

from .dependencies import Limits

Text = Annotated[str, StringConstraints(max_length=Limits.max_text_chars)]


# ---------------------------------------------------------------- requests

class TweetsRequest(BaseModel):
    texts: list[Text] = Field(min_length=1, max_length=Limits.max_texts, description="the tweets")
    keywords: list[Annotated[str, StringConstraints(max_length=200)]] | None = Field(
        None, description="Kaggle's keyword column, one per text (optional)")
    explain: bool = Field(False, description="add word attributions")

    model_config = {"json_schema_extra": {"examples": [  # shown by /docs, and sent by the schema test
        {"texts": ["Forest fire near La Ronge Sask. Canada", "I love fruits"], "keywords": ["wildfire", ""],
         "explain": True}]}}

    @model_validator(mode="after")
    def _same_length(self):
        if self.keywords is not None and len(self.keywords) != len(self.texts):
            raise ValueError(f"keywords has {len(self.keywords)} entries for {len(self.texts)} texts")
        return self


# ---------------------------------------------------------------- refusals

class Error(BaseModel):
    """Every refusal. A body that fails the request's schema lists its errors (FastAPI's validation); every other
    refusal says why in a sentence."""
    detail: str | list[dict[str, Any]] = Field(description="why the request was refused")


ERRORS = {
    400: "a body that cannot be parsed (JSON that is not UTF-8, a broken multipart form, or one with more parts "
         "than the route takes)",
    401: "this server has a token, and the request did not send 'Authorization: Bearer <token>'",
    404: "no such model, job or output",
    413: "over one of the server's size limits: the body, an image's pixels, a slide's tiles",
    415: "not multipart/form-data, or an upload that is not an image",
    422: "a value out of range, or a file that cannot be read",
    429: "as many slide jobs are queued or running as the server takes",
}


def refusals(*codes: int) -> dict:
    """The refusals a route may answer, for its `responses=` (so the schema says what a 4xx body holds)."""
    return {code: {"model": Error, "description": ERRORS[code]} for code in codes}


# ---------------------------------------------------------------- health and models

class Health(BaseModel):
    status: str = Field(description="'ok' while the server answers")
    models: list[str] = Field(description="names of the served models")
    limits: dict[str, Any] = Field(description="what one request and one slide job may ask for")


class Ping(BaseModel):
    status: str = Field(description="TorchServe's 'Healthy'")


class ModelInfo(BaseModel):
    name: str
    task: str = Field(description="'histo' or 'tweets'")
    kind: str = Field(description="the model kind, e.g. 'resnet', 'bigru', 'ensemble'")
    threshold: float = Field(description="the run's decision threshold on the probability")
    ensemble: bool
    members: list[str] | None = Field(None, description="an ensemble's member runs")
    validation: dict[str, Any] = Field(description="validation scores recorded in the run folder")
    settings: dict[str, Any] = Field(description="training settings (no server paths)")
    explanation: str | None = Field(None, description="how predictions are explained; null: not explainable")
    backend: list[dict[str, Any]] | None = Field(None, description="histology: each model's inference backend "
                                                 "(eager, compiled, onnx) for patches, and for slide jobs once one "
                                                 "ran, with why it was chosen")


class Models(BaseModel):
    models: list[ModelInfo]
    cam_scale_logits: float = Field(description="Grad-CAM logits at full colour in the overlays")
    slides: bool = Field(description="whether whole-slide inference is available")
    limits: dict[str, Any] = Field(description="what one request may ask for")


# ---------------------------------------------------------------- predictions

class PatchExplanation(BaseModel):
    method: str
    crop: int | None = Field(description="centre square the model sees, when it crops")
    overlay_png: str = Field(description="base64 PNG: the patch with its Grad-CAM map")
    max_logit: float
    centre_share: float = Field(description="share of the map in the labelled centre 32x32")


class PatchResult(BaseModel):
    name: str = Field(description="the uploaded file's name")
    probability: float
    label: int = Field(description="1 when probability >= threshold")
    note: str | None = Field(None, description="what was done to the image (centre crop, transparency)")
    thumbnail_png: str | None = Field(None, description="base64 PNG of the patch, when asked for")
    explanation: PatchExplanation | None = None


class PatchAnswer(BaseModel):
    model: str
    threshold: float
    tta: bool
    results: list[PatchResult]


class TweetResult(BaseModel):
    text: str
    keyword: str
    probability: float
    label: int = Field(description="1 when probability >= threshold")
    explanation: dict[str, Any] | None = Field(None, description="word attributions, when asked for")


class TweetsAnswer(BaseModel):
    model: str
    threshold: float
    results: list[TweetResult]


# ---------------------------------------------------------------- slide jobs

class JobStarted(BaseModel):
    job: str
    status_url: str


class JobStatus(BaseModel):
    job: str
    model: str
    status: str = Field(description="queued, running, done, failed, cancelled, or deleted (a finished job after DELETE)")
    progress: float = Field(description="share of the tiles scored, 0 to 1")
    message: str = Field(description="why a job failed")
    seconds: float
    summary: dict[str, Any] | None = Field(None, description="the slide's summary, when done")
    files: dict[str, str] | None = Field(None, description="output name -> download URL, when done")
