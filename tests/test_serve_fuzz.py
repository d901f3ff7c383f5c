"""A bounded fuzz of a real `spotter serve` on loopback: a few hundred random, truncated and oversized bodies.
Every one is answered with a 4xx, the server stays up, and its memory does not keep growing: over the measured
requests it grows by less than a quarter of the bodies it read, so a leak of any one part in four of each body
fails (issue 28: the bound was 40 MB, more than all the bodies together)."""
import json
import random
import socket

import httpx
import psutil
import pytest

import serve_runs
from serve_process import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    serve_runs.need_shared_data()
    runs = [serve_runs.histo_run(tmp_path_factory), serve_runs.tweets_run(tmp_path_factory, "tfidf")]
    s = Server(runs, "--max-upload-mb", "1", log=tmp_path_factory.mktemp("fuzz") / "server.log")
    yield s
    s.stop()


def bad_requests(rng: random.Random, real_tif: bytes, n: int):
    """(method, path, keyword arguments for httpx) of requests that must each be refused. Bodies run up to a
    few hundred KB, under the 1 MB cap (the server reads them all), so that keeping any share of them shows."""
    png = b"\x89PNG\r\n\x1a\n"
    for i in range(n):
        kind = i % 10
        if kind == 0:  # random bytes named like an image
            yield "POST", "/api/histo/cnn/predict", {"files": [("files", ("r.tif", rng.randbytes(rng.randint(0, 300_000))))]}
        elif kind == 1:  # a real patch cut short
            yield "POST", "/api/histo/cnn/predict", {"files": [("files", ("t.tif", real_tif[:rng.randint(0, 27000)]))]}
        elif kind == 2:  # a PNG signature followed by garbage
            yield "POST", "/api/histo/cnn/predict", {"files": [("files", ("p.png", png + rng.randbytes(rng.randint(0, 200_000))))]}
        elif kind == 3:  # over the 1 MB cap
            yield "POST", "/api/histo/cnn/predict", {"files": [("files", ("big.tif", real_tif * 40))]}
        elif kind == 4:  # random JSON-ish text for the tweets model
            body = rng.choice([rng.randbytes(rng.randint(0, 200_000)), b"[]", b"{}", b'{"texts": 3}', b'{"texts": [1, 2]}',
                               json.dumps({"texts": ["x"] * rng.randint(257, 400)}).encode(),
                               json.dumps({"texts": ["z" * 1999] * 257}).encode(),  # 500 KB, one text too many
                               json.dumps({"texts": ["y" * rng.randint(2001, 300_000)]}).encode()])
            yield "POST", "/api/tweets/tfidf/predict", {"content": body, "headers": {"content-type": "application/json"}}
        elif kind == 5:  # a broken multipart body
            yield "POST", "/api/histo/cnn/predict", {"content": b"--xx\r\n" + rng.randbytes(rng.randint(0, 200_000)),
                                                     "headers": {"content-type": "multipart/form-data; boundary=xx"}}
        elif kind == 6:  # paths that try to leave the server's folders
            yield "GET", rng.choice(["/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                                     "/api/jobs/../../etc/passwd", "/api/jobs/x/files/..%2f..%2fetc%2fpasswd",
                                     "/api/jobs/" + "a" * 300, "/static/" + "b" * 200]), {}
        elif kind == 7:  # wrong model, wrong task
            yield "POST", rng.choice(["/api/histo/tfidf/predict", "/api/tweets/nope/predict", "/predictions/zz"]), \
                {"json": {"texts": ["a"]}}
        elif kind == 8:  # a header that claims a huge body (sent by hand: httpx will not lie)
            yield "RAW", "/api/tweets/tfidf/predict", {"length": rng.choice([10**12, 2 * 2**20, -5]), "body": b"{}"}
        else:  # a slide that is not an image
            yield "POST", "/api/histo/cnn/slides", {"files": {"file": ("s.tif", rng.randbytes(rng.randint(0, 300_000)))}}


def raw_post(port: int, path: str, length: int, body: bytes) -> int:
    """POST with a Content-Length that does not match the body; the status code of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode() + body)
        reply = s.recv(200)
    return int(reply.split(b" ")[1])


def rss(process: psutil.Process) -> int:
    return process.memory_info().rss


def test_fuzz(server, tmp_path_factory):
    real_tif = sorted((serve_runs.histo_data(tmp_path_factory) / "test").glob("*.tif"))[0].read_bytes()
    rng = random.Random(0)
    process = psutil.Process(server.process.pid)
    statuses, server_cap = [], 2**20  # --max-upload-mb 1
    with httpx.Client(base_url=server.url, timeout=60) as client:
        def round_of(n) -> int:
            """Send n bad requests and one good one; the bytes of the bodies the server read (under the cap)."""
            read = 0
            for method, path, kwargs in bad_requests(rng, real_tif, n):
                if method == "RAW":
                    statuses.append(raw_post(server.port, path, kwargs["length"], kwargs["body"]))
                    assert 400 <= statuses[-1] < 500, (path, kwargs["length"], statuses[-1])
                    continue
                request = client.build_request(method, path, **kwargs)
                size = len(request.read())
                read += size if size <= server_cap else 0  # over the cap: refused by its Content-Length, unread
                response = client.send(request)
                assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:300])
                assert "Traceback" not in response.text
                statuses.append(response.status_code)
            good = client.post("/api/histo/cnn/predict", files=[("files", ("ok.tif", real_tif))])
            assert good.status_code == 200  # still serving
            return read

        round_of(100)  # warm up: the first requests allocate caches, buffers and the model's activations
        before = rss(process)
        read = round_of(300)
        after = rss(process)
    grown = after - before
    print(f"\nfuzz: {len(statuses)} bad requests, answers {sorted(set(statuses))}; server RSS "
          f"{before / 2**20:.1f} -> {after / 2**20:.1f} MB over the last 300, which sent {read / 2**20:.1f} MB of "
          f"bodies it read")
    assert len(statuses) == 400 and {413, 415, 422, 404} <= set(statuses)
    assert read > 15 * 2**20  # enough that a share of each body kept would stand out from the allocator's noise
    assert grown < read / 4, f"the server grew {grown / 2**20:.1f} MB over 300 bad requests, a quarter of their " \
                             f"{read / 2**20:.1f} MB of bodies or more: it keeps part of what it reads"
