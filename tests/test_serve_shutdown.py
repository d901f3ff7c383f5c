"""Ctrl-C stops a real `spotter serve` within seconds while a slide job runs, and leaves no job folder."""
import signal
import time

import httpx

import serve_runs
from serve_process import Server


def test_ctrl_c_stops_the_server_during_a_slide_job(tmp_path_factory, tmp_path):
    serve_runs.need_shared_data()
    run = serve_runs.histo_run(tmp_path_factory)
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = Server([run], log=tmp_path / "server.log", env={"TMPDIR": str(temp)})
    try:
        started = httpx.post(server.url + "/api/histo/cnn/slides", timeout=120,
                             files={"file": ("slow.png", serve_runs.mosaic_png(tmp_path_factory, 2048))},
                             data={"mpp": "0.972", "stride": "8"})
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 120
        while httpx.get(server.url + started.json()["status_url"], timeout=30).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)  # well inside the job (tens of seconds at stride 8)
        assert list(temp.glob("spotter-serve-*")), "the job folder should exist while the job runs"
        sent = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        server.process.wait(30)
        stopped = time.monotonic() - sent
    finally:
        server.stop()
    print(f"stopped {stopped:.1f} s after Ctrl-C")
    assert stopped < 10, f"stopped {stopped:.1f} s after Ctrl-C: {(tmp_path / 'server.log').read_text()[-1500:]}"
    assert not list(temp.glob("spotter-serve-*")), "job folders left behind"
