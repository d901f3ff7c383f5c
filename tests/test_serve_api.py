"""`spotter serve`'s JSON API, in process (httpx through the ASGI app), on real runs and real Kaggle data."""
import asyncio
import io
import json
import struct
import time
import zlib

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import serve_runs
from spotter.cli import main
from spotter.serve import app as serve_app
from spotter.serve.jobs import SLIDE_OUTPUTS
from spotter.serve.routes.slides import MEDIA_TYPES
from spotter.tweets.text import normalise, tokenize


@pytest.fixture(scope="session")
def served_runs(tmp_path_factory):
    serve_runs.need_shared_data()
    return {"cnn": serve_runs.histo_run(tmp_path_factory), "rnn": serve_runs.tweets_run(tmp_path_factory, "bigru"),
            "tfidf": serve_runs.tweets_run(tmp_path_factory, "tfidf"), "both": serve_runs.tweets_ensemble(tmp_path_factory)}


@pytest.fixture(scope="session")
def application(served_runs):
    return serve_app.create_app(list(served_runs.values()), device="cpu", log=lambda message: None)


@pytest.fixture
def client(application):
    with TestClient(application) as c:
        yield c


def patch_files(folder, n=None):
    paths = sorted(folder.glob("*.tif"))[:n]
    return [("files", (p.name, p.read_bytes(), "image/tiff")) for p in paths]


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_models(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["models"] == ["cnn", "rnn", "tfidf", "both"]
    assert health["limits"]["max_slide_tiles"] == 2_000_000
    assert client.get("/ping").json() == {"status": "Healthy"}
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert models["cnn"]["task"] == "histo" and models["cnn"]["kind"] == "resnet-plain"
    assert 0.5 < models["cnn"]["validation"]["auc"] <= 1 and models["cnn"]["settings"]["epochs"] == 6
    assert "data" not in models["cnn"]["settings"]  # no server paths
    assert [b["requested"] for b in models["cnn"]["backend"]] == ["auto"] and "backend" not in models["rnn"]
    for name, kind in (("rnn", "bigru"), ("tfidf", "tfidf")):
        assert models[name]["task"] == "tweets" and models[name]["kind"] == kind
        assert 0 < models[name]["threshold"] < 1 and 0 < models[name]["validation"]["f1"] <= 1
    assert models["tfidf"]["explanation"] == "exact contributions"
    docs = client.get("/docs").text  # Swagger UI from the package, not a CDN
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/api/histo/{model}/predict" in client.get("/openapi.json").json()["paths"]
    assert models["both"]["ensemble"] and models["both"]["members"] == ["rnn", "tfidf"] and models["both"]["explanation"] is None


@pytest.mark.parametrize("tta", [False, True])
def test_histo_probabilities_equal_the_cli(client, served_runs, tmp_path_factory, tmp_path, tta):
    test_dir = serve_runs.histo_data(tmp_path_factory) / "test"
    out = tmp_path / "sub.csv"
    assert main(["histo", "predict", served_runs["cnn"], "--images", test_dir, "--out", out, "--device", "cpu",
                 *(["--tta"] if tta else [])]) == 0
    offline = pd.read_csv(out, dtype={"id": str}).set_index("id")["label"]
    response = client.post("/api/histo/cnn/predict", files=patch_files(test_dir), data={"tta": str(tta).lower()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tta"] is tta and body["threshold"] == 0.5 and len(body["results"]) == 29
    served = pd.Series({r["name"][:-4]: r["probability"] for r in body["results"]})
    np.testing.assert_allclose(served[offline.index], offline, atol=2e-5)
    assert all(r["label"] == int(r["probability"] >= 0.5) for r in body["results"])


@pytest.mark.parametrize("model", ["rnn", "tfidf", "both"])
def test_tweets_probabilities_equal_the_cli(client, served_runs, tmp_path_factory, tmp_path, model):
    csv = serve_runs.tweets_data(tmp_path_factory) / "test.csv"
    out = tmp_path / "sub.csv"
    assert main(["tweets", "predict", served_runs[model], "--csv", csv, "--out", out, "--proba", "--device", "cpu"]) == 0
    offline = pd.read_csv(out)
    test = pd.read_csv(csv, keep_default_na=False)
    body = client.post(f"/api/tweets/{model}/predict",
                       json={"texts": test["text"].tolist(), "keywords": test["keyword"].tolist()}).json()
    probs = np.array([r["probability"] for r in body["results"]])
    np.testing.assert_allclose(probs, offline["proba"], atol=1e-5)
    assert [r["label"] for r in body["results"]] == offline["target"].tolist()


def test_histo_explanation_is_an_overlay(client, tmp_path_factory):
    test_dir = serve_runs.histo_data(tmp_path_factory) / "test"
    body = client.post("/api/histo/cnn/predict?explain=true", files=patch_files(test_dir, 3)).json()
    for r in body["results"]:
        e = r["explanation"]
        import base64
        image = Image.open(io.BytesIO(base64.b64decode(e["overlay_png"])))
        assert image.size == (288, 288) and image.mode == "RGB"
        assert e["max_logit"] >= 0 and 0 <= e["centre_share"] <= 1
    # TorchServe's name for the same
    assert client.post("/explanations/cnn", files=patch_files(test_dir, 1)).json()["results"][0]["explanation"]


def test_tweets_explanations_follow_the_original_words(client):
    texts = ["Forest fire near La Ronge Sask. Canada #wildfire http://t.co/abc", "I love fruits &amp; summer"]
    for model in ("rnn", "tfidf"):
        body = client.post(f"/api/tweets/{model}/predict",
                           json={"texts": texts, "keywords": ["wildfire", ""], "explain": True}).json()
        for text, r in zip(texts, body["results"]):
            e = r["explanation"]
            assert [w["text"] for w in e["words"]] == text.split()
            total = sum(w["attribution"] for w in e["words"]) + (e["keyword"] or 0)
            gap = e["logit"] - e["baseline_logit"]
            # TF-IDF is exact; integrated gradients with 32 steps is close
            assert abs(total - gap) < (1e-6 if model == "tfidf" else 0.05 * abs(gap) + 0.02), (model, total, gap)
        assert body["results"][1]["explanation"]["keyword"] is None
    plain = client.post("/api/tweets/tfidf/predict", json={"texts": texts}).json()["results"]
    same = client.post("/predictions/tfidf", json={"texts": texts}).json()["results"]  # TorchServe's name
    assert [r["probability"] for r in same] == [r["probability"] for r in plain]
    refused = client.post("/api/tweets/both/predict", json={"texts": texts, "explain": True})
    assert refused.status_code == 422 and "explain one of its members" in refused.json()["detail"]


NON_ASCII = [
    ("Forêt en feu près de Montréal — évacuation immédiate! 🔥🔥 #incendie", "wildfire"),
    ("東京で大地震\u3000津波警報が発令されました", "earthquake"),  # no spaces but an ideographic one
    ("حريق كبير في وسط المدينة الآن", ""),  # right to left
    ("שריפה ענקית ליד חיפה, flood warning too", "flood"),
    ("zero\u200bwidth\u200cjoiners\u200d and a soft\u00adhyphen \ufeffBOM inside", ""),
    ("e\u0301 combining, ＦＩＲＥ fullwidth, \u202eevil\u202c override, 👨\u200d👩\u200d👧 family near 🌊", "séisme"),
    ("a" * 700 + " " + "supercalifragilisticexpialidocious" * 30 + " end", ""),  # very long words
]


@pytest.mark.parametrize("model", ["rnn", "tfidf", "both"])
def test_non_ascii_tweets_through_the_api_equal_the_cli(client, served_runs, tmp_path, model):
    """Accents, emoji, CJK, right-to-left scripts, zero-width and combining characters and very long words: the
    API's probability is `tweets predict`'s for the same text, and each explanation's words are the text's own
    words, in order, with attributions that add up to the logit (exactly for TF-IDF)."""
    texts, keywords = [t for t, _ in NON_ASCII], [k for _, k in NON_ASCII]
    csv = tmp_path / "test.csv"
    pd.DataFrame({"id": range(len(texts)), "keyword": keywords, "location": "", "text": texts}).to_csv(csv,
                                                                                                       index=False)
    assert main(["tweets", "predict", served_runs[model], "--csv", csv, "--out", tmp_path / "sub.csv", "--proba",
                 "--device", "cpu"]) == 0
    offline = pd.read_csv(tmp_path / "sub.csv")
    response = client.post(f"/api/tweets/{model}/predict",
                           json={"texts": texts, "keywords": keywords, "explain": model != "both"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["text"] for r in results] == texts and [r["keyword"] for r in results] == keywords
    np.testing.assert_allclose([r["probability"] for r in results], offline["proba"], atol=1e-5)
    assert [r["label"] for r in results] == offline["target"].tolist()
    if model == "both":  # an ensemble has no attributions
        return
    for (text, _), r in zip(NON_ASCII, results):
        e = r["explanation"]
        words = [w["text"] for w in e["words"]]
        assert words == text.split(), (model, text[:40])
        at = 0  # each word found in the text, in order: the page marks them on the text as sent
        for word in words:
            at = text.index(word, at) + len(word)
        total = sum(w["attribution"] for w in e["words"]) + (e["keyword"] or 0)
        gap = e["logit"] - e["baseline_logit"]
        assert abs(total - gap) < (1e-6 if model == "tfidf" else 0.05 * abs(gap) + 0.02), (model, text[:40], total, gap)


def test_a_tweet_without_tokens_is_attributed_completely(client):
    text = "東京で大地震\u3000津波警報が発令されました"
    assert not tokenize(normalise(text))
    answer = client.post("/api/tweets/rnn/predict", json={"texts": [text], "explain": True}).json()
    e = answer["results"][0]["explanation"]
    total, gap = sum(w["attribution"] for w in e["words"]), e["logit"] - e["baseline_logit"]
    assert abs(total - gap) < 0.05 * abs(gap) + 0.02, (total, gap)


def test_concurrent_requests_share_batches_and_get_their_own_answers(application, tmp_path_factory):
    paths = sorted((serve_runs.histo_data(tmp_path_factory) / "test").glob("*.tif"))[:24]
    batcher = application.state.server.models["cnn"].batcher

    async def run():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            async def one(path):
                r = await c.post("/api/histo/cnn/predict", files=[("files", (path.name, path.read_bytes()))])
                return r.json()["results"][0]["probability"]

            async def bad(i):  # bad requests in between change nothing for the good ones
                r = await c.post("/api/histo/cnn/predict", files=[("files", (f"x{i}.tif", b"II*\x00" + b"\x00" * 50))])
                return r.status_code
            before = (batcher.batches, batcher.requests)
            results = await asyncio.gather(*[one(p) for p in paths], *[bad(i) for i in range(8)])
            together = await c.post("/api/histo/cnn/predict", files=[("files", (p.name, p.read_bytes())) for p in paths])
            return before, results, together.json()
    with TestClient(application):  # the application's lifespan: its threads are started (earlier tests closed it)
        before, results, together = asyncio.run(run())
    batches, requests = batcher.batches - before[0], batcher.requests - before[1]
    assert requests == 25 and batches < 24  # 24 single-patch requests and one of 24, in fewer forward passes
    np.testing.assert_allclose(results[:24], [r["probability"] for r in together["results"]], atol=2e-5)
    assert results[24:] == [422] * 8


def test_grad_cam_hooks_are_removed(application, tmp_path_factory):
    from spotter.explain import cam_layer
    predictor = application.state.server.models["cnn"].predictor
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((serve_runs.histo_data(tmp_path_factory) / "test").glob("*.tif"))[:2]])
    for _ in range(3):
        predictor.grad_cam(pixels)
    assert not cam_layer(predictor.model)._forward_hooks


# ---------------------------------------------------------------- errors


def huge_png_header(width, height):
    """A PNG whose header claims width x height: a decompression bomb is refused before any decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def test_bad_requests_get_clear_4xx(client, tmp_path_factory):
    test_dir = serve_runs.histo_data(tmp_path_factory) / "test"
    real = sorted(test_dir.glob("*.tif"))[0].read_bytes()
    post = lambda files, **kw: client.post("/api/histo/cnn/predict", files=files, **kw)  # noqa: E731

    cases = {
        "unknown model": (client.post("/api/histo/nope/predict", files=[("files", ("a.tif", real))]), 404, "no model named"),
        "wrong task": (client.post("/api/tweets/cnn/predict", json={"texts": ["x"]}), 404, "histo model"),
        "text named .tif": (post([("files", ("a.tif", b"hello, this is text"))]), 415, "judged by its bytes"),
        "not multipart": (client.post("/api/histo/cnn/predict", content=real, headers={"content-type": "image/tiff"}), 415, "multipart"),
        "no files": (post([("tta", (None, "true"))]), 422, "no files"),
        "truncated TIFF": (post([("files", ("t.tif", real[:5000]))]), 422, "t.tif"),
        "too small": (post([("files", ("s.png", png_bytes(np.zeros((50, 60, 3), np.uint8))))]), 422, "60x50"),
        "grey": (post([("files", ("g.png", png_bytes(np.zeros((96, 96), np.uint8))))]), 422, "mode L"),
        "pixel bomb": (post([("files", ("bomb.png", huge_png_header(60000, 60000)))]), 413, "cap of 16,777,216 pixels"),
        "pixels over the cap": (post([("files", ("b.png", huge_png_header(5000, 5000)))]), 413, "25,000,000 pixels"),
        "too many files": (post([("files", (f"{i}.tif", real)) for i in range(65)]), 422, "at most 64"),
        "bad flag": (post([("files", ("a.tif", real))], data={"tta": "maybe"}), 422, "tta"),
        "no texts": (client.post("/api/tweets/rnn/predict", json={"texts": []}), 422, "at least 1"),
        "too many texts": (client.post("/api/tweets/rnn/predict", json={"texts": ["a"] * 257}), 422, "at most 256"),
        "text too long": (client.post("/api/tweets/rnn/predict", json={"texts": ["a" * 2001]}), 422, "at most 2000"),
        "keywords mismatch": (client.post("/api/tweets/rnn/predict", json={"texts": ["a", "b"], "keywords": ["x"]}), 422, "keywords has 1"),
        "not JSON": (client.post("/api/tweets/rnn/predict", content=b"{nope", headers={"content-type": "application/json"}), 422, "json"),
        "unknown job": (client.get("/api/jobs/123"), 404, "no job"),
        "path in file route": (client.get("/api/jobs/123/files/..%2f..%2fetc%2fpasswd"), 404, ""),
    }
    for name, (response, status, words) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text[:300])
        assert words.lower() in json.dumps(response.json()).lower(), (name, response.text[:300])
    # a larger image is cut to its centre, and says so
    big = np.asarray(Image.open(io.BytesIO(real)).resize((200, 150)))
    r = post([("files", ("big.png", png_bytes(big)))]).json()["results"][0]
    assert r["note"] == "centre 96x96 of a 200x150 image"


def test_upload_cap_and_token(served_runs, tmp_path_factory):
    real = sorted((serve_runs.histo_data(tmp_path_factory) / "test").glob("*.tif"))[0].read_bytes()
    app = serve_app.create_app([served_runs["cnn"]], device="cpu", token="s3cret", log=lambda message: None,
                               limits=serve_app.Limits(max_upload_mb=0.1))
    with TestClient(app) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/health", headers=auth).status_code == 200
        assert c.get("/").status_code == 200  # the page itself is public; it asks for the token
        ok = c.post("/api/histo/cnn/predict", files=[("files", ("a.tif", real))], headers=auth)
        assert ok.status_code == 200
        big = c.post("/api/histo/cnn/predict", files=[("files", (f"{i}.tif", real)) for i in range(5)], headers=auth)
        assert big.status_code == 413 and "cap" in big.json()["detail"]

        def chunked():  # no Content-Length: counted while reading
            for _ in range(5):
                yield real
        streamed = c.post("/api/tweets/cnn/predict", content=chunked(), headers={**auth, "content-type": "application/json"})
        assert streamed.status_code == 413


def test_loopback_only_without_token(served_runs, capsys):
    serve_app.check_host("127.0.0.1", None)
    serve_app.check_host("::1", None)
    serve_app.check_host("0.0.0.0", "token")
    with pytest.raises(ValueError, match="without --token"):
        serve_app.check_host("0.0.0.0", None)
    assert main(["serve", served_runs["cnn"], "--host", "192.168.1.10"]) == 2
    assert "refusing to listen on 192.168.1.10 without --token" in capsys.readouterr().err


# ---------------------------------------------------------------- slide jobs

def slide_tiff(factory) -> bytes:
    """A 384x384 TIFF of 16 real training patches (Kaggle's patches: 0.972 µm per pixel)."""
    pixels = [np.asarray(Image.open(p)) for p in sorted((serve_runs.histo_data(factory) / "train").glob("*.tif"))[:16]]
    mosaic = np.concatenate([np.concatenate(pixels[r * 4:(r + 1) * 4], 1) for r in range(4)], 0)
    buffer = io.BytesIO()
    Image.fromarray(mosaic).save(buffer, format="TIFF")
    return buffer.getvalue()


def wait_for_job(client, url: str, seconds: float = 300) -> dict:
    deadline = time.monotonic() + seconds
    while (status := client.get(url).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def histo_slide_tiles(run, data: bytes, name: str, stride: int, tmp_path) -> pd.DataFrame:
    """`spotter histo slide`'s tiles.csv for the same run, slide and stride."""
    (tmp_path / name).write_bytes(data)
    assert main(["histo", "slide", run, "--image", tmp_path / name, "--out", tmp_path / f"{name}-out",
                 "--mpp", "0.972", "--stride", str(stride), "--workers", "0", "--device", "cpu"]) == 0
    return pd.read_csv(tmp_path / f"{name}-out" / "tiles.csv")


def test_slide_jobs_at_once_score_as_histo_slide_and_every_output_downloads(client, application, served_runs,
                                                                            tmp_path_factory, tmp_path):
    """Two jobs queued together (a PNG at stride 32, a TIFF at stride 96) and a third cancelled while it waits: the
    two finish, each job's tiles equal `histo slide`'s (same run, slide and stride) within 1e-3, every output
    downloads with its type and holds no server path, and the cancelled job's folder is gone."""
    slides = {"b.png": (serve_runs.mosaic_png(tmp_path_factory, 384), 32), "a.tif": (slide_tiff(tmp_path_factory), 96)}
    urls = {}
    for name, (data, stride) in slides.items():
        r = client.post("/api/histo/cnn/slides", files={"file": (name, data)},
                        data={"mpp": "0.972", "stride": str(stride)})
        assert r.status_code == 202, r.text
        urls[name] = r.json()["status_url"]
    waiting = client.post("/api/histo/cnn/slides", files={"file": ("c.tif", slides["a.tif"][0])},
                          data={"mpp": "0.972", "stride": "96"}).json()["job"]
    assert client.get(urls["b.png"]).json()["status"] in ("queued", "running")  # the three were queued together
    folder = application.state.server.jobs.get(waiting).folder
    assert client.delete(f"/api/jobs/{waiting}").json()["status"] == "cancelled" and not folder.exists()

    for name, (data, stride) in slides.items():
        status = wait_for_job(client, urls[name])
        assert status["status"] == "done" and status["summary"]["stride"] == stride, status
        assert set(status["files"]) == set(SLIDE_OUTPUTS)
        got = {output: client.get(url) for output, url in status["files"].items()}
        for output, r in got.items():
            kind = MEDIA_TYPES[output[output.rindex("."):]]
            assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == kind, (output, r.headers)
            assert str(served_runs["cnn"]) not in r.text and "spotter-serve-" not in r.text, output  # no server path
        for picture in ("overlay.png", "heatmap.png", "tissue.png"):
            Image.open(io.BytesIO(got[picture].content)).verify()
        assert got["tiles.geojson"].json()["type"] == got["regions.geojson"].json()["type"] == "FeatureCollection"
        assert got["slide.json"].json() == status["summary"] and status["summary"]["run"] == "cnn"
        served = pd.read_csv(io.BytesIO(got["tiles.csv"].content))
        offline = histo_slide_tiles(served_runs["cnn"], data, name, stride, tmp_path)
        assert len(served) == len(offline) > 0
        pd.testing.assert_frame_equal(served.drop(columns="prob_tumor"), offline.drop(columns="prob_tumor"))
        np.testing.assert_allclose(served["prob_tumor"], offline["prob_tumor"], atol=1e-3)
        assert len(got["tiles.geojson"].json()["features"]) == len(served)
        folder = application.state.server.jobs.get(status["job"]).folder
        assert client.delete(urls[name]).json()["status"] == "deleted" and not folder.exists()
        assert client.get(urls[name]).status_code == 404


def test_a_slide_job_that_fails_says_why_without_server_paths(client):
    """Slides that pass the upload's checks and fail while scored: a blank image (no tissue) and a PNG cut short
    (its header is whole). The job is `failed` with the reason, names no server folder, and has no outputs."""
    blank = io.BytesIO()
    Image.fromarray(np.full((384, 384, 3), 245, np.uint8)).save(blank, format="PNG")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (384, 384, 3), np.uint8)).save(noise, format="PNG")
    for data, reason in ((blank.getvalue(), "no tissue found"), (noise.getvalue()[:40_000], "truncated")):
        r = client.post("/api/histo/cnn/slides", files={"file": ("s.png", data)}, data={"mpp": "0.972"})
        assert r.status_code == 202, r.text
        status = wait_for_job(client, r.json()["status_url"])
        assert status["status"] == "failed" and reason in status["message"], status
        assert status["message"].startswith("slide.png: ") and "spotter-serve-" not in status["message"], status
        assert "files" not in status and "summary" not in status
        assert client.get(f"/api/jobs/{status['job']}/files/tiles.csv").status_code == 404


def tiff_header(width, height):
    """The start of a TIFF whose first directory says width x height (LONG values), as a slide's would."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (262, 3, 1, 2)]
    return (b"II*\x00" + struct.pack("<IH", 8, len(entries))
            + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0))


def test_slide_size_is_read_from_the_header(client):
    """A slide bigger than Pillow's own bomb limit is taken (its size comes from the header); one over the
    server's cap is refused before anything is decoded."""
    from spotter.histo import images
    data = tiff_header(12000, 20000)  # 240 M pixels: over Pillow's limit, under the server's
    assert images.header_size(data) == (12000, 20000)
    assert images.check_slide(data, "big.tif", 2_000_000_000) == "tiff"
    with pytest.raises(images.UploadError, match="240,000,000 pixels"):
        images.check_slide(data, "big.tif", 100_000_000)
    assert images.header_size(huge_png_header(70000, 50000)) == (70000, 50000)
    response = client.post("/api/histo/cnn/slides", files={"file": ("bomb.png", huge_png_header(70000, 50000))})
    assert response.status_code == 413 and "3,500,000,000 pixels" in response.json()["detail"]
    # a real slide-sized TIFF written by tifffile has the same header fields
    import tifffile
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((300, 500, 3), np.uint8), photometric="rgb", tile=(256, 256))
    assert images.header_size(buffer.getvalue()) == (500, 300)
