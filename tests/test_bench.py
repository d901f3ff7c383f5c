"""`spotter bench`: stages that die or hang are reported as failed, and the bench's own checks fail loudly;
the scripts in bench/ are command lines over the package's stages."""
import os
import runpy
import signal
import time
from pathlib import Path

import pytest

from spotter import bench
from spotter.bench import slides

SCRIPTS = sorted((Path(__file__).parent.parent / "bench").glob("*.py"))


def killed_stage():
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does


def hanging_stage():
    time.sleep(600)


def good_stage(x):
    return {"x": x}


def raising_stage():
    raise RuntimeError("no such pack")


def test_a_killed_stage_is_reported_failed_not_awaited():
    start = time.monotonic()
    assert bench.isolated(killed_stage) == {"failed": "killed by signal 9 (out of memory?) before reporting"}
    assert time.monotonic() - start < 60


def test_a_hanging_stage_is_stopped_at_its_timeout():
    start = time.monotonic()
    result = bench.isolated(hanging_stage, timeout_s=2)
    assert result == {"failed": "no result after 2 s: stopped"}
    assert time.monotonic() - start < 60


def test_stage_results_and_errors_come_back():
    result = bench.isolated(good_stage, 3)
    assert result["x"] == 3 and result["peak_rss_mb"] > 0
    assert bench.isolated(raising_stage) == {"failed": "RuntimeError: no such pack"}


def test_end_to_end_above_its_ceiling_is_a_problem_and_nan_is_never_shown():
    r = {"failed_stages": {"effnet": "killed by signal 9"}, "e2e_over_ceiling": 1.65}
    found = bench.problems(r)
    assert len(found) == 2 and "165% of its own ceiling" in found[1] and "effnet" in found[0]
    assert bench.problems({"failed_stages": {}, "e2e_over_ceiling": 1.05}) == []
    table = bench.format_table({"stage_peak_rss_mb": {"pack": 300.0}, "failed_stages": {}, "cpu": "x",
                                "cpu_threads": 2, "torch": "t", "pack_files_per_s": 1e4, "pack_mb_per_s": 276.0,
                                "disk_write_fsync_mb_per_s": 240.0, "pack_over_disk": 1.15, "pil_files_per_s": 2e3})
    assert "tifffile loop, same files | not installed" in table and "nan" not in table
    assert "276 MB/s" in table and "240 MB/s (packing at 115% of it)" in table


def _in_package(value) -> bool:
    return (getattr(value, "__module__", None) or getattr(value, "__name__", "")).startswith("spotter.bench.")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_bench_script_is_a_command_line_over_the_package(script):
    namespace = runpy.run_path(str(script), run_name="imported")  # not "__main__": nothing runs
    assert callable(namespace["main"]) and any(_in_package(v) for v in namespace.values())


def test_spotter_bench_and_the_slide_script_run_the_same_slide_stage():
    script = runpy.run_path(str(SCRIPTS[0].parent / "slide_bench.py"), run_name="imported")
    assert script["stage_slide"] is bench.stage_slide is slides.stage_slide
