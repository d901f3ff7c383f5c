"""`spotter bench`: stages that die or hang are reported as failed, and the bench's own checks fail loudly;
the scripts in bench/ are command lines over the package's stages."""
import os
import runpy
import signal
import time
from pathlib import Path

import pytest

from conftest import HISTO, require
from spotter import bench
from spotter.bench import inference, slides

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


@pytest.mark.slow  # a process per model and backend, with an export and a compile: about 10 s
def test_the_inference_table_has_a_row_per_model_and_backend_with_rates_setup_and_break_even():
    require(HISTO)
    in_process = lambda fn, *args: fn(*args)  # noqa: E731  (isolated() is tested above; this keeps the test quick)
    rows, stages = inference.measure(in_process, str(HISTO), True, "cpu", ["seed"])
    assert [r["backend"] for r in rows] == ["eager", "compiled", "onnx"]
    eager, onnx = rows[0], rows[2]
    for r in (eager, onnx):
        assert r["model"] == "seed" and r["patches_per_s"] > 0 and r["tta_patches_per_s"] > 0
        assert r["setup_s"] >= 0 and r["precision"] in ("fp32", "bf16")
    assert eager["setup_s"] == 0 and onnx["setup_s"] > 0
    assert "break_even_patches" in onnx and "tta_break_even_patches" in onnx
    assert set(eager["auto_choice"]) == set(inference.JOBS) == set(eager["auto_choice_tta"])
    assert eager["auto_choice"]["29 patches"] == "eager", "29 patches never pay back a setup"
    assert set(stages) == {"inference seed eager", "inference seed compiled", "inference seed onnx"}
    table = "\n".join(inference.format_table(rows))
    assert "| seed | onnx |" in table and "29 patches" in table


def test_break_even_and_auto_choice_follow_the_timings():
    assert inference.break_even(10.0, 100.0, 200.0) == pytest.approx(2000)  # 5 ms saved a patch
    assert inference.break_even(10.0, 200.0, 100.0) is None
    rows = [{"model": "m", "backend": "eager", "patches_per_s": 100.0, "tta_patches_per_s": 12.5, "setup_s": 0.0},
            {"model": "m", "backend": "compiled", "patches_per_s": 400.0, "tta_patches_per_s": 50.0, "setup_s": 60.0},
            {"model": "m", "backend": "onnx", "skipped": "not here"}]
    eager = inference.add_decisions(rows)[0]
    assert eager["auto_choice"] == {"29 patches": "eager", "Kaggle test (57,458)": "compiled",
                                    "slide (300k tiles)": "compiled"}
    assert rows[1]["break_even_patches"] == pytest.approx(60 / (0.01 - 0.0025))
