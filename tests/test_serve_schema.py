"""The HTTP API tested from its own OpenAPI schema (schemathesis, issue 28 item 5), against a real `spotter serve`
on loopback: for every operation the schema lists, a bounded number of generated requests, valid and invalid
(schemathesis's examples, coverage and fuzzing phases; fuzzing stops at `max_examples`). No answer is a 5xx, every
answer's status is one its route declares, and its body matches the schema declared for that status."""
import collections
import copy
import time

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

import serve_runs
from serve_process import Server
from spotter.serve import app as serve_app
from spotter.serve.jobs import SLIDE_OUTPUTS

MODELS = ["cnn", "tfidf"]  # the runs served below, as serve_runs names their folders
DONE_JOB = "a-finished-job"  # stands for the id of a slide job that has finished (known once the server runs)


def openapi() -> dict:
    """The schema the server publishes. It does not depend on the runs served, so it is read from an application
    serving none: schemathesis makes its tests at collection, before any server runs (the fixture checks that the
    real server publishes the same)."""
    app = serve_app.create_app([], device="cpu", log=lambda message: None)
    app.state.server.close()  # its threads and job folder (nothing was started)
    return app.openapi()


def aimed(published: dict) -> dict:
    """The published schema with its free-text path parameters narrowed to values that exist (the served models, a
    finished job, its outputs), so that valid requests reach the models and the jobs instead of stopping at a 404.
    The invalid requests schemathesis generates still try any other value."""
    narrowed = copy.deepcopy(published)
    values = {"model": MODELS, "job_id": [DONE_JOB], "name": list(SLIDE_OUTPUTS)}
    for operation in (op for ops in narrowed["paths"].values() for op in ops.values()):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                parameter["schema"] = {"type": "string", "enum": values[parameter["name"]]}
    return narrowed


PUBLISHED = openapi()
schema = schemathesis.openapi.from_dict(aimed(PUBLISHED))
statuses = collections.defaultdict(collections.Counter)  # operation -> status -> answers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    serve_runs.need_shared_data()
    runs = [serve_runs.histo_run(tmp_path_factory), serve_runs.tweets_run(tmp_path_factory, "tfidf")]
    s = Server(runs, log=tmp_path_factory.mktemp("schema") / "server.log")
    try:
        assert httpx.get(s.url + "/openapi.json").json() == PUBLISHED
        # Two finished jobs: one to read, one for DELETE (which deletes a finished job).
        s.job, s.deleted_job = (finished_job(s, tmp_path_factory) for _ in range(2))
        yield s
    finally:
        s.stop()


def finished_job(s: Server, tmp_path_factory) -> str:
    started = httpx.post(s.url + "/api/histo/cnn/slides", data={"mpp": "0.972", "stride": "96"},
                         files={"file": ("s.png", serve_runs.mosaic_png(tmp_path_factory, 384))})
    assert started.status_code == 202, started.text
    job = started.json()["job"]
    deadline = time.monotonic() + 120
    while httpx.get(f"{s.url}/api/jobs/{job}").json()["status"] != "done":
        assert time.monotonic() < deadline, "the slide job did not finish"
        time.sleep(0.2)
    return job


@schema.parametrize()
@hypothesis.settings(max_examples=15, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_5xx_and_every_answer_matches_its_schema(case, server):
    if case.path_parameters and case.path_parameters.get("job_id") == DONE_JOB:
        case.path_parameters["job_id"] = server.deleted_job if case.method == "DELETE" else server.job
    response = case.call_and_validate(base_url=server.url, timeout=60, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance])
    statuses[f"{case.method} {case.path}"][response.status_code] += 1


def test_the_generated_requests_reached_the_models_and_the_jobs():
    """Not only refusals: valid requests were answered for each operation that can answer them."""
    assert statuses, "run the whole module: this test reads what the schema test above recorded"
    print("\n" + "\n".join(f"{op}: {dict(sorted(c.items()))}" for op, c in sorted(statuses.items())))
    ok = {op for op, counts in statuses.items() if any(code < 300 for code in counts)}
    assert ok >= {"POST /api/tweets/{model}/predict", "POST /predictions/{model}", "GET /api/jobs/{job_id}",
                  "GET /api/jobs/{job_id}/files/{name}", "DELETE /api/jobs/{job_id}", "GET /api/health"}, statuses


def test_half_a_surrogate_pair_is_refused_not_a_500(server):
    """JSON can spell half a UTF-16 pair ("\\ud800"), which schemathesis never generates (it sends encodable text).
    Pydantic refuses it, and FastAPI's answer echoed it and could not be encoded in UTF-8: a 500."""
    for path, body in (("/api/tweets/tfidf/predict", b'{"texts": ["fire \\ud800"]}'),
                       ("/api/tweets/tfidf/predict", b'{"texts": ["a"], "keywords": ["\\udfff"]}'),
                       ("/predictions/tfidf", b'{"texts": ["\\ud800"]}')):
        r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "unicode" in r.text.lower(), (path, r.status_code, r.text[:300])
