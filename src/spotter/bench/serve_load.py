"""Load test of `spotter serve`, for bench/serve_load.py: requests/s, latency percentiles and images/s against
offline prediction.

Starts a real `spotter serve` on a free loopback port (never anything else), measures the same model's offline
throughput in this process first, then runs 1, 8 and 64 concurrent clients, each for at most `seconds` and
`max_requests`, and stops the server. Prints a table and writes JSON. Bounded and self-stopping.
The clients run in this process, on the same machine as the server: on a small machine they take CPU from it.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from ..files import shared_data
from ..serve.runs import load_model

DEFAULT_IMAGES = shared_data("histopathology") / "train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_rate(predictor, pixels: np.ndarray, repeats: int = 3) -> float:
    """Images/s of the loaded model on whole in-memory batches of 256: what `histo predict` does after packing."""
    predictor.predict_proba(pixels[:256])  # warm up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_proba(pixels)
        best = max(best, len(pixels) / (time.perf_counter() - start))
    return best


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "spotterloadtest"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Connection:
    """One keep-alive HTTP/1.1 connection with prepared requests: a client that costs next to nothing, so the
    measurement is of the server (a general client such as httpx spends more CPU per request than the server's
    batch does per patch, and here it shares the same cores)."""

    def __init__(self, port: int):
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def load(port: int, model: str, files: list[tuple[str, bytes]], clients: int, per_request: int, seconds: float,
               max_requests: int) -> dict:
    requests = []
    for i in range(0, len(files), per_request):
        body, content_type = multipart([files[(i + k) % len(files)] for k in range(per_request)])
        requests.append(f"POST /api/histo/{model}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}"
                        f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    latencies, errors, sent = [], 0, 0
    connections = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*[c.open() for c in connections])
    await asyncio.gather(*[c.send(requests[0]) for c in connections])  # untimed: opens the connections
    stop_at = time.perf_counter() + seconds

    async def worker(w: int, connection: Connection) -> None:
        nonlocal errors, sent
        i = w
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            start = time.perf_counter()
            status = await connection.send(requests[i % len(requests)])
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            i += clients

    start = time.perf_counter()
    await asyncio.gather(*[worker(w, c) for w, c in enumerate(connections)])
    elapsed = time.perf_counter() - start
    for c in connections:
        c.close()
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "images_per_s": len(latencies) * per_request / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}



def load_test(run: Path, extra_runs: list[Path], images: Path, n_images: int, client_counts: list[int],
              seconds: float, max_requests: int, per_request: int, out: Path) -> dict:
    """Offline rate, then the server under each client count; prints the table and writes JSON to `out`."""
    paths = sorted(images.glob("*.tif"))[:n_images]
    if not paths:
        raise SystemExit(f"{images}: no .tif patches")
    files = [(p.name, p.read_bytes()) for p in paths]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    _, predictor = load_model(run, "cpu")  # the loader the server uses
    offline_pixels = np.concatenate([pixels] * max(1, 2048 // len(pixels)))
    offline = offline_rate(predictor, offline_pixels)
    print(f"offline: {offline:.0f} images/s (in-memory batches of 256, same model, this process)", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="spotter-serve-load-", suffix=".log")[1])
    server = subprocess.Popen([sys.executable, "-m", "spotter", "serve", str(run), *map(str, extra_runs),
                               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows, peak = [], 0
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        process = psutil.Process(server.pid)
        idle_rss = process.memory_info().rss
        model = run.resolve().name
        for clients in client_counts:
            row = asyncio.run(load(port, model, files, clients, per_request, seconds, max_requests))
            peak = max(peak, process.memory_info().rss)
            row["of_offline"] = row["images_per_s"] / offline  # against the first offline figure until the end
            rows.append(row)
            print(f"{clients:>3} clients: {row['requests_per_s']:.0f} req/s, {row['images_per_s']:.0f} img/s "
                  f"({row['of_offline']:.0%} of offline), p50 {row['p50_ms']:.0f} ms", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    # Measured again with the server gone; the better of the two is the baseline (other load only lowers it).
    after = offline_rate(predictor, offline_pixels)
    print(f"offline again: {after:.0f} images/s", flush=True)
    offline = max(offline, after)
    for row in rows:
        row["of_offline"] = row["images_per_s"] / offline

    print(f"\n{'clients':>7} | {'requests':>8} | {'req/s':>7} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | "
          f"{'img/s':>7} | of offline")
    for r in rows:
        print(f"{r['clients']:>7} | {r['requests']:>8} | {r['requests_per_s']:>7.1f} | {r['p50_ms']:>7.1f} | "
              f"{r['p95_ms']:>7.1f} | {r['p99_ms']:>7.1f} | {r['images_per_s']:>7.1f} | {r['of_offline']:.0%}"
              + (f"  ({r['errors']} errors)" if r["errors"] else ""))
    print(f"offline: {offline:.0f} img/s; {per_request} patch(es) per request; server RSS {idle_rss / 2**20:.0f} MB "
          f"idle with {1 + len(extra_runs)} model(s), peak {peak / 2**20:.0f} MB under load")
    result = {"offline_images_per_s": offline, "per_request": per_request, "server_rss_idle_mb": idle_rss / 2**20,
              "server_rss_peak_mb": peak / 2**20, "models": 1 + len(extra_runs), "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result
