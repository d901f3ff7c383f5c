"""`--precision auto`: measured per model, input shape and machine, cached, and never read off CPU flags."""
import json

import pytest
import torch
from torch import nn

from spotter import engine, measured, precision
from test_engine import SETTINGS, tiny_task

pytestmark = pytest.mark.usefixtures("own_cache")  # the precision cache is the subject: each test its own


def fake_timer(seconds, calls):
    """A step timer that reports fixed seconds per precision and counts its calls."""
    def time_step(p):
        calls.append(p)
        return [seconds[p]]
    return time_step


@pytest.mark.parametrize("fp32, bf16, expected", [(1.0, 0.5, "bf16"), (1.0, 0.99, "fp32"), (0.5, 1.0, "fp32")])
def test_the_faster_precision_is_chosen_and_cached(tmp_path, monkeypatch, fp32, bf16, expected):
    # Flags claiming fast bf16 must not matter: only the timings do.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    path, calls, said = tmp_path / "precision.json", [], []
    choice = precision.decide("key", fake_timer({"fp32": fp32, "bf16": bf16}, calls), path=path, log=said.append)
    assert choice.precision == expected and not choice.cached
    assert sorted(calls) == sorted(precision.PRECISIONS * precision.TIMED_STEPS)
    assert choice.seconds_per_step == {"fp32": fp32, "bf16": bf16}
    assert f"precision auto: {expected}" in said[-1] and "ms/step" in said[-1]

    # Second time: from the cache, no timing at all, same answer and reason.
    again = precision.decide("key", fake_timer({}, calls := []), path=path)
    assert (again.precision, again.cached, calls) == (expected, True, [])
    assert choice.reason in again.reason and str(path) in again.reason
    assert json.loads(path.read_text())["key"]["precision"] == expected

    # Another model, shape or machine is measured on its own.
    other = precision.decide("other", fake_timer({"fp32": bf16, "bf16": fp32}, calls), path=path)
    assert not other.cached and len(calls) == 2 * precision.TIMED_STEPS
    assert set(json.loads(path.read_text())) == {"key", "other"}


def test_a_disturbed_measurement_is_measured_again_by_a_later_run(tmp_path, monkeypatch):
    # This run keeps it (a compile warm-up and the training after it must agree); a later run measures again.
    path, times = tmp_path / "precision.json", iter([1.0, 0.5, 3.0, 0.5, 1.0, 0.5])  # fp32, bf16 alternating
    choice = precision.decide("k", lambda p: [next(times)], path=path)
    assert choice.precision == "bf16" and "varied more than" in choice.reason and "measured again" in choice.reason
    assert precision.decide("k", fake_timer({}, []), path=path).cached
    assert json.loads(path.read_text())["k"]["noisy"] == ["fp32"]

    monkeypatch.setattr(measured, "THIS_RUN", "a later run")
    said = []
    again = precision.decide("k", fake_timer({"fp32": 0.5, "bf16": 1.0}, calls := []), path=path, log=said.append)
    assert (again.precision, again.cached, len(calls)) == ("fp32", False, 2 * precision.TIMED_STEPS)
    assert "disturbed" in said[0] and "varied" not in again.reason
    assert precision.decide("k", fake_timer({}, []), path=path).cached  # a quiet measurement stands
    monkeypatch.setattr(measured, "THIS_RUN", "yet another run")
    assert precision.decide("k", fake_timer({}, []), path=path).cached


def test_a_disturbed_decision_cached_before_the_flag_existed_is_measured_again(tmp_path):
    # The case found: `auto` had kept fp32 for EfficientNet-Lite1 from one disturbed first measurement.
    path = tmp_path / "precision.json"
    path.write_text(json.dumps({"k": {"precision": "fp32", "seconds_per_step": {"fp32": 1.0, "bf16": 1.2},
                                      "reason": "measured ...; step times in bf16 varied more than 1.5x (other load?): "
                                                "delete it to measure again"}}))
    again = precision.decide("k", fake_timer({"fp32": 1.0, "bf16": 0.8}, []), path=path)
    assert (again.precision, again.cached) == ("bf16", False)


def test_a_damaged_cache_is_measured_again(tmp_path):
    path = tmp_path / "precision.json"
    path.write_text("{not json")
    assert precision.decide("k", fake_timer({"fp32": 1.0, "bf16": 2.0}, []), path=path).precision == "fp32"
    assert "k" in json.loads(path.read_text())


def test_explicit_or_nothing_to_time():
    cpu = torch.device("cpu")
    assert precision.choose(cpu, "bf16").precision == "bf16"
    assert engine.pick_precision(cpu, "fp32") == "fp32"
    assert engine.pick_precision(cpu) == "fp32"  # auto with no model: never a guess from flags


def test_real_timing_leaves_the_model_and_random_streams_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(8 * 14 * 14, 1),
                          nn.Flatten(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(16, 3, 16, 16), torch.ones(16))
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    said = []
    choice = precision.choose(torch.device("cpu"), model=model, batch=batch, log=said.append)
    assert choice.precision in precision.PRECISIONS and not choice.cached
    assert all(s > 0 for s in choice.seconds_per_step.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Training and inference are separate decisions; the same shape again comes from the cache.
    assert not precision.choose(torch.device("cpu"), model=model, batch=batch, train=False).cached
    assert precision.choose(torch.device("cpu"), model=model, batch=lambda: batch).cached
    assert len(json.loads(precision.cache_file().read_text())) == 2
    assert "timing" in said[0]


def test_fit_runs_in_the_cached_decision_and_records_why(tmp_path):
    task = tiny_task()
    inputs, _ = next(task.train_batches(0, 0, 1))
    key = precision.cache_key(task.model, inputs, torch.device("cpu"), train=True)
    precision.cache_file().parent.mkdir(parents=True)
    precision.cache_file().write_text(json.dumps({key: {"precision": "bf16", "reason": "faked for the test",
                                                       "seconds_per_step": {"fp32": 2.0, "bf16": 1.0}}}))
    said = []
    engine.fit(task, SETTINGS, tmp_path, kind="t", log=said.append)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["precision"] == "bf16" and "faked for the test" in settings["precision_reason"]
    assert any("precision auto: bf16" in line for line in said)


def test_a_resume_keeps_the_runs_precision_when_the_cache_changed(tmp_path):
    """A run and its resume use one precision, even when precision.json was deleted (or re-timed to the
    other answer) in between: the resumed epochs must continue the run, not switch bf16 for fp32."""
    task = tiny_task(poison_epoch=2)  # epoch 2 stops on a NaN loss: last.pt holds epoch 1 of 2
    inputs, _ = next(task.train_batches(0, 0, 1))
    key = precision.cache_key(task.model, inputs, torch.device("cpu"), train=True)
    precision.cache_file().parent.mkdir(parents=True)

    def cache(choice):
        other = "fp32" if choice == "bf16" else "bf16"
        precision.cache_file().write_text(json.dumps({key: {"precision": choice, "reason": "faked for the test",
                                                           "seconds_per_step": {choice: 1.0, other: 2.0}}}))

    cache("bf16")
    settings = engine.TrainSettings(epochs=2, lr=0.05, device="cpu")
    with pytest.raises(FloatingPointError):
        engine.fit(task, settings, tmp_path, kind="t", log=lambda s: None)
    assert json.loads((tmp_path / "settings.json").read_text())["precision"] == "bf16"
    cache("fp32")  # the cache deleted and measured again, with the other answer
    engine.fit(tiny_task(), settings, tmp_path, kind="t", resume=True, log=lambda s: None)
    assert json.loads((tmp_path / "settings.json").read_text())["precision"] == "bf16"
