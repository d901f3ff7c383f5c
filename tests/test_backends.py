"""Inference backends (eager, compiled, onnx): the same probabilities; chosen only where their setup pays back
within the job, measured once and cached like the precision; TTA's 8 views as one model batch."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import histo_slice
from spotter import backends, engine, measured, mosaic
from spotter.cli import main
from spotter.histo.predictor import load_run
from spotter.histo.preprocess import dihedral_views, preprocess

CPU = torch.device("cpu")
# bf16's tolerance: on the run below (logits within +-4), the largest difference measured on the 2-core development
# machine was 9.8e-3 between bf16 (eager or compiled, TTA or not) and eager fp32, and 2.6e-3 between compiled and
# eager bf16 (bf16 keeps 8 bits of mantissa; fusing rounds at other places). The test allows twice the larger.
BF16_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch resnet-plain run (BatchNorm, residuals: what freezing folds) on 64 real patches, its last layer
    scaled up so its probabilities spread over 0-1 (an untrained model's sit near 0.5, where rounding hides)."""
    root = tmp_path_factory.mktemp("backends")
    data = histo_slice(root / "data", 64, n_test=29)
    run = root / "run"
    assert main(["histo", "train", "--data", data, "--out", run, "--model", "resnet-plain", "--crop", "64",
                 "--epochs", "1", "--batch-size", "32", "--precision", "fp32", "--device", "cpu",
                 "--val-fraction", "0.25"]) == 0
    ids = pd.read_csv(data / "train_labels.csv")["id"].tolist()
    patches = mosaic.read_patches(data / "train", ids)
    p = load_run(run, "cpu", "fp32", backend="eager").predict_proba(patches).astype(np.float64)
    logits = np.log(p / (1 - p))
    centre, scale = np.median(logits), 4 / np.abs(logits - np.median(logits)).max()  # logits now within +-4
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["model"]["head.3.weight"] *= scale
    ckpt["model"]["head.3.bias"] = (ckpt["model"]["head.3.bias"] - centre) * scale
    torch.save(ckpt, run / "best.pt")
    return run, data, patches


@pytest.mark.slow  # compiles four graphs: about a minute on 2 cores
def test_every_backend_gives_eager_fp32s_probabilities(trained):
    run, _, patches = trained
    eager = load_run(run, "cpu", "fp32", backend="eager")
    reference = {tta: eager.predict_proba(patches, tta) for tta in (False, True)}
    assert np.ptp(reference[False]) > 0.5  # probabilities that differ, not all near 0.5
    for backend in ("compiled", "onnx"):  # plain: 64 patches padded to the compiled 256; TTA: 2 x (32 x 8)
        predictor = load_run(run, "cpu", "fp32", backend=backend)
        for tta in (False, True):
            np.testing.assert_allclose(predictor.predict_proba(patches, tta), reference[tta], atol=1e-4)
        decision = predictor.describe()["backend"][0]
        assert decision["backend"] == backend and decision["setup_s"][backend] > 0
    bf16 = {(backend, tta): load_run(run, "cpu", "bf16", backend=backend).predict_proba(patches, tta)
            for backend in ("eager", "compiled") for tta in (False, True)}
    against_fp32 = max(np.abs(p - reference[tta]).max() for (_, tta), p in bf16.items())
    compiled_against_eager = max(np.abs(bf16["compiled", tta] - bf16["eager", tta]).max() for tta in (False, True))
    print(f"bf16 against fp32: {against_fp32:.2e}; compiled bf16 against eager bf16: {compiled_against_eager:.2e}")
    assert against_fp32 < BF16_TOLERANCE and compiled_against_eager < BF16_TOLERANCE


def test_tta_views_go_through_as_one_model_batch_with_the_same_probabilities(trained):
    run, _, patches = trained
    predictor = load_run(run, "cpu", "fp32", backend="eager")
    model = predictor.model
    # Before: each of the 8 views of a batch of up to 256 patches was its own model call.
    x = preprocess(torch.from_numpy(patches), predictor.crop, norm=predictor.norm)
    with torch.no_grad():
        before = torch.stack([torch.sigmoid(model(v)) for v in dihedral_views(x)]).mean(0).numpy()
    calls = []
    hook = model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        after = predictor.predict_proba(patches, tta=True)
        assert calls == [256, 256]  # 64 patches: 2 batches of 32 patches x 8 views
        calls.clear()
        # Called with bigger batches, predict_probs keeps each call within max_rows: here 3 views of 40 per call.
        batch = [(x[:40], torch.zeros(40))]
        engine.predict_probs(model, batch, CPU, "fp32", transform=dihedral_views, max_rows=128)
        assert calls == [120, 120, 80]
    finally:
        hook.remove()
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_the_cli_with_onnx_writes_eagers_predictions_and_records_the_backend(trained, tmp_path):
    run, data, _ = trained
    for backend in ("eager", "onnx"):
        assert main(["histo", "predict", run, "--images", data / "test", "--out", tmp_path / f"{backend}.csv",
                     "--device", "cpu", "--backend", backend]) == 0
    eager, onnx = (pd.read_csv(tmp_path / f"{b}.csv", dtype={"id": str}) for b in ("eager", "onnx"))
    assert list(onnx["id"]) == list(eager["id"]) and len(onnx) == 29
    np.testing.assert_allclose(onnx["label"], eager["label"], atol=1e-4)

    assert main(["histo", "evaluate", run, "--device", "cpu", "--backend", "onnx"]) == 0
    (decision,) = json.loads((run / "evaluation.json").read_text())["backend"]
    assert decision["backend"] == decision["requested"] == "onnx" and "explicitly" in decision["reason"]


def test_a_slide_with_onnx_scores_eagers_tiles_and_records_the_backend(trained, tmp_path):
    run, _, patches = trained
    image = tmp_path / "mosaic.tif"
    mosaic.write_mosaic(image, mosaic.mosaic_image(patches[:36], 6, 6, 96))
    for backend in ("eager", "onnx"):
        assert main(["histo", "slide", run, "--image", image, "--out", tmp_path / backend, "--stride", "96",
                     "--device", "cpu", "--workers", "0", "--backend", backend]) == 0
    eager, onnx = (pd.read_csv(tmp_path / b / "tiles.csv") for b in ("eager", "onnx"))
    assert len(eager) >= 36
    pd.testing.assert_frame_equal(onnx.drop(columns="prob_tumor"), eager.drop(columns="prob_tumor"))
    np.testing.assert_allclose(onnx["prob_tumor"], eager["prob_tumor"], atol=2e-3)  # the heat map is float16
    (decision,) = json.loads((tmp_path / "onnx" / "slide.json").read_text())["backend"]
    assert decision["backend"] == "onnx"


def test_a_small_job_stays_eager_and_measures_nothing(trained, tmp_path, own_cache):
    run, data, _ = trained
    assert main(["histo", "predict", run, "--images", data / "test", "--out", tmp_path / "p.csv",
                 "--device", "cpu"]) == 0
    assert not backends.cache_file().exists()
    assert main(["histo", "evaluate", run, "--device", "cpu"]) == 0
    (decision,) = json.loads((run / "evaluation.json").read_text())["backend"]
    assert decision["backend"] == "eager" and decision["requested"] == "auto"


def test_onnx_without_onnxruntime_is_one_clear_line(trained, tmp_path, monkeypatch, capsys):
    run, data, _ = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails, as when it is not installed
    capsys.readouterr()
    assert main(["histo", "predict", run, "--images", data / "test", "--out", tmp_path / "p.csv",
                 "--device", "cpu", "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxruntime" in err and "pip install 'spotter[export]'" in err
    assert not (tmp_path / "p.csv").exists()


def test_auto_measures_for_real_caches_and_records_why(trained, own_cache):
    run, _, patches = trained
    predictor = load_run(run, "cpu", "fp32")
    reference = load_run(run, "cpu", "fp32", backend="eager").predict_proba(patches)
    # As if eager had taken 1 ms per patch on the job's first batches: 5,000 patches could pay back an ONNX
    # export (a 2 s guess) but not a compile (10 s), so only onnx is built and timed against eager.
    predictor.backend.observe_eager(1.0, 1000)
    np.testing.assert_allclose(predictor.predict_proba(patches, job=5000), reference, atol=1e-4)
    entry = json.loads(backends.cache_file().read_text())[predictor.backend.key]
    assert set(entry["seconds_per_patch"]) == {"eager", "onnx"} and min(entry["seconds_per_patch"].values()) > 0
    assert entry["setup_s"]["onnx"] > 0 and entry["run"] == measured.THIS_RUN
    (decision,) = predictor.describe()["backend"]
    assert decision["measured_now"] and decision["job"] == 5000 and "timed by this run" in decision["reason"]
    assert decision["backend"] in ("eager", "onnx") and decision["seconds_per_patch"] == entry["seconds_per_patch"]


# ---------------------------------------------------------------- the decision, with injected timings

SETUP = {"compiled": 30.0, "onnx": 2.0}
FAST = {"eager": 1e-3, "compiled": 4e-4, "onnx": 2e-4}  # seconds per patch-view


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Selectors whose builds and timings are injected: what was built and timed is recorded."""
    log = {"built": [], "timed": [], "seconds": dict(FAST), "spread": {}, "broken": set()}

    def build(self, backend):
        if backend in log["broken"]:
            raise RuntimeError(f"{backend} cannot be built\nmore detail")
        log["built"].append(backend)
        self.built[backend] = nn.Identity()
        return SETUP[backend]

    def timer(self):
        spread = {b: iter(s) for b, s in log["spread"].items()}

        def time_batch(backend):
            log["timed"].append(backend)
            return [log["seconds"][backend] * next(spread.get(backend, iter([1.0])), 1.0)]
        return time_batch

    monkeypatch.setattr(backends.Selector, "_build", build)
    monkeypatch.setattr(backends.Selector, "_timer", timer)
    path = tmp_path / "backends.json"
    log["new"] = lambda: backends.Selector(nn.Conv2d(3, 1, 3), (256, 3, 64, 64), CPU, "fp32", path=path)
    log["path"] = path
    return log


def later_run(monkeypatch, name):
    monkeypatch.setattr(measured, "THIS_RUN", name)


def test_the_break_even_counts_the_setup():
    seconds = {"eager": 1e-3, "onnx": 2e-4}
    assert backends.pick(2000, seconds, {"onnx": 2.0})[0] == "eager"  # 2.4 s against 2 s eager
    assert backends.pick(3000, seconds, {"onnx": 2.0})[0] == "onnx"  # 2.6 s against 3 s
    assert backends.pick(10, seconds, {"onnx": 2.0}, built={"onnx"})[0] == "onnx"  # built already: nothing to pay
    assert backends.pick(10**6, {"eager": 1e-3, "onnx": 0.97e-3}, {"onnx": 0.0})[0] == "eager"  # within noise


def test_a_small_job_is_eager_without_measuring(fake):
    selector = fake["new"]()
    assert selector.runner(29) is selector.model  # nothing known yet: the first batches run eager
    selector.observe_eager(0.029, 29)
    assert selector.runner(2000) is selector.model  # 2 s eager: no backend's setup could pay back
    assert fake["built"] == fake["timed"] == [] and not fake["path"].exists()
    assert "too short" in selector.decision.reason


def test_a_server_never_measures_but_uses_what_an_earlier_job_measured(fake):
    served = fake["new"]()
    served.measure = False  # as serve/runs.py sets it
    served.observe_eager(1.0, 1000)
    assert served.runner(10**6) is served.model and fake["built"] == fake["timed"] == []
    earlier = fake["new"]()
    earlier.observe_eager(1.0, 1000)
    earlier.runner(10**6)  # a big `histo slide` measured and cached
    fake["built"].clear(), fake["timed"].clear()
    served = fake["new"]()
    served.measure = False
    served.runner(10**6)
    assert fake["built"] == [served.decision.backend] != ["eager"] and fake["timed"] == []


def test_a_big_job_measures_and_takes_the_faster_backend(fake, monkeypatch):
    selector = fake["new"]()
    selector.observe_eager(1.0, 1000)
    selector.runner(10**6)
    assert fake["built"] == ["compiled", "onnx"]
    assert sorted(fake["timed"]) == sorted(["eager", "compiled", "onnx"] * backends.TIMED_BATCHES)
    decision = selector.decision
    assert (decision.backend, decision.measured_now, decision.job) == ("onnx", True, 10**6)
    assert set(selector.built) == {"eager", "onnx"}  # the compiled graph is let go
    entry = json.loads(fake["path"].read_text())[selector.key]
    assert entry["seconds_per_patch"] == FAST and entry["setup_s"] == SETUP and entry["noisy"] == []

    # A later run reuses the quiet measurement: no timing; the setup is paid only where it pays back.
    later_run(monkeypatch, "later")
    fake["built"].clear(), fake["timed"].clear()
    small = fake["new"]()
    assert small.runner(2000) is small.model and fake["built"] == []  # 2.4 s with onnx's setup against 2 s
    big = fake["new"]()
    big.runner(10**5)
    assert big.decision.backend == "onnx" and not big.decision.measured_now
    assert fake["built"] == ["onnx"] and fake["timed"] == []


def test_only_the_backends_that_could_pay_back_are_measured(fake):
    selector = fake["new"]()
    selector.observe_eager(1.0, 1000)
    selector.runner(10_000)  # 10 s eager: at most 7.5 s to save, more than onnx's 2 s guess, less than compile's 10
    assert fake["built"] == ["onnx"] and "compiled" not in fake["timed"]
    assert selector.decision.backend == "onnx"


def test_a_disturbed_measurement_is_measured_again_by_a_later_run(fake, monkeypatch):
    fake["spread"] = {"compiled": [1.0, 2.0, 1.0]}  # other load during compiled's second timed batch
    first = fake["new"]()
    first.observe_eager(1.0, 1000)
    first.runner(10**6)
    entry = json.loads(fake["path"].read_text())[first.key]
    assert entry["noisy"] == ["compiled"] and "measured again" in first.decision.reason
    fake["timed"].clear()
    fake["new"]().runner(10**6)  # this run keeps it
    assert fake["timed"] == []

    later_run(monkeypatch, "later")
    fake["new"]().runner(29)  # a small job measures nothing, whatever the cache holds
    assert fake["timed"] == []
    fake["spread"] = {}
    again = fake["new"]()
    again.runner(10**6)
    assert "compiled" in fake["timed"] and json.loads(fake["path"].read_text())[again.key]["noisy"] == []
    later_run(monkeypatch, "yet later")
    fake["timed"].clear()
    fake["new"]().runner(10**6)
    assert fake["timed"] == []  # a quiet measurement stands


def test_a_backend_that_fails_here_is_remembered_and_not_used(fake, monkeypatch):
    fake["broken"] = {"onnx"}  # e.g. an operator the exporter lacks
    selector = fake["new"]()
    selector.observe_eager(1.0, 1000)
    selector.runner(10**6)
    entry = json.loads(fake["path"].read_text())[selector.key]
    assert entry["failed"] == {"onnx": "RuntimeError: onnx cannot be built"}
    assert "onnx" not in entry["seconds_per_patch"]
    assert selector.decision.backend == "compiled"

    later_run(monkeypatch, "later")
    fake["broken"] = {"compiled"}  # the compiler gone since: the cached choice fails, eager runs instead
    fake["timed"].clear()
    again = fake["new"]()
    assert again.runner(10**6) is again.model and fake["timed"] == []
    assert set(json.loads(fake["path"].read_text())[again.key]["failed"]) == {"onnx", "compiled"}
    assert "compiled failed here (RuntimeError: compiled cannot be built)" in again.decision.reason
