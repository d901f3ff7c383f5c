"""`spotter serve` under two things at once, hostile inputs and shutdown (issue 27): each test failed before
its fix."""
import asyncio
import io
import json
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import serve_runs
from spotter.serve import app as serve_app
from spotter.serve.batcher import Batcher
from spotter.serve.info import model_info


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory):
    serve_runs.need_shared_data()
    return {"cnn": serve_runs.histo_run(tmp_path_factory), "rnn": serve_runs.tweets_run(tmp_path_factory, "bigru"),
            "tfidf": serve_runs.tweets_run(tmp_path_factory, "tfidf")}


@pytest.fixture(scope="module")
def client(served_runs):
    app = serve_app.create_app(list(served_runs.values()), device="cpu", log=lambda message: None)
    with TestClient(app) as c:
        yield c


# ---------------------------------------------------------------- 1. explanations beside predictions

def test_concurrent_explanations_do_not_change_predictions(client, tmp_path_factory):
    """8 threads x 10 requests mixing plain and explained requests on a histology and two tweets models:
    no 5xx, and every probability is the one the same input gets alone."""
    patches = sorted((serve_runs.histo_data(tmp_path_factory) / "test").glob("*.tif"))[:10]
    texts = pd.read_csv(serve_runs.tweets_data(tmp_path_factory) / "test.csv", keep_default_na=False)["text"][:10]

    def ask(model: str, k: int, explain: bool):
        if model == "cnn":
            r = client.post("/api/histo/cnn/predict", data={"explain": str(explain).lower()},
                            files=[("files", (patches[k].name, patches[k].read_bytes()))])
        else:
            r = client.post(f"/api/tweets/{model}/predict", json={"texts": [texts[k]], "explain": explain})
        return r.status_code, (r.json()["results"][0]["probability"] if r.status_code == 200 else r.text[:300])

    models = ("cnn", "rnn", "tfidf")
    alone = {(m, k): ask(m, k, False)[1] for m in models for k in range(10)}

    def worker(i: int):
        return [((models[(i + j) % 3], (i * 3 + j) % 10), j % 2 == 1) for j in range(10)]

    def run(i: int):
        return [(key, explain, ask(*key, explain)) for key, explain in worker(i)]
    with ThreadPoolExecutor(8) as pool:
        answers = [a for part in pool.map(run, range(8)) for a in part]
    failures = [(key, explain, body) for key, explain, (status, body) in answers if status != 200]
    assert not failures, failures
    worst = max(abs(prob - alone[key]) for key, _, (_, prob) in answers)
    assert worst <= 1e-6, worst

