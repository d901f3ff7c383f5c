"""The shared engine on a tiny task: checkpoints, resume, faults."""
import errno

import numpy as np
import pytest
import torch
from torch import nn

from spotter import engine
from spotter.metrics import roc_auc


def tiny_task(seed=0, poison_epoch=None):
    torch.manual_seed(seed)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).float()
    model = nn.Linear(4, 1)

    class Squeeze(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, v):
            return self.inner(v).squeeze(1)

    net = Squeeze()

    def batches(epoch, rank, world):
        order = np.random.default_rng(epoch).permutation(48)
        for i in range(0, 48, 16):
            yield x[order[i:i + 16]], y[order[i:i + 16]]

    def start_epoch(epoch):
        if epoch == poison_epoch:
            with torch.no_grad():
                model.weight.fill_(float("nan"))

    return engine.Task(model=net, train_batches=batches, val_batches=lambda rank, world: iter([(x[48:], y[48:])]),
                       score=lambda l, p: {"auc": roc_auc(l, p), "loss": 0.0}, main_metric="auc",
                       steps_per_epoch=3, start_epoch=start_epoch)


SETTINGS = engine.TrainSettings(epochs=3, lr=0.05, device="cpu")


def test_same_seed_same_result(tmp_path):
    a = engine.fit(tiny_task(), SETTINGS, tmp_path / "a", kind="t", log=lambda s: None)
    b = engine.fit(tiny_task(), SETTINGS, tmp_path / "b", kind="t", log=lambda s: None)
    assert a == {**b, "seconds": a["seconds"], "per_s": a["per_s"]}


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="loss became nan"):
        engine.fit(tiny_task(poison_epoch=2), SETTINGS, tmp_path, kind="t", log=lambda s: None)
    ckpt = engine.load_checkpoint(tmp_path / "last.pt", "t")
    assert ckpt["state"]["epoch"] == 1 and torch.isfinite(ckpt["model"]["inner.weight"]).all()


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    engine.fit(tiny_task(), engine.TrainSettings(epochs=1, device="cpu"), tmp_path, kind="t", log=lambda s: None)
    before = (tmp_path / "last.pt").read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(engine.CheckpointError, match="No space left.*previous one is kept"):
        engine.save_atomic({"x": 1}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before and not (tmp_path / "last.pt.tmp").exists()


def test_damaged_or_foreign_checkpoints_are_refused_clearly(tmp_path):
    engine.fit(tiny_task(), engine.TrainSettings(epochs=1, device="cpu"), tmp_path, kind="t", log=lambda s: None)
    with pytest.raises(engine.CheckpointError, match="this is a t checkpoint, not a histo one"):
        engine.load_checkpoint(tmp_path / "best.pt", "histo")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(engine.CheckpointError, match="damaged"):
        engine.load_checkpoint(tmp_path / "last.pt", "t")
    with pytest.raises(engine.CheckpointError, match="damaged"):
        engine.fit(tiny_task(), SETTINGS, tmp_path, kind="t", resume=True, log=lambda s: None)
    assert engine.load_checkpoint(tmp_path / "best.pt", "t")["state"]["epoch"] == 1  # still good
    torch.save({"version": 99, "task": "t"}, tmp_path / "old.pt")
    with pytest.raises(engine.CheckpointError, match="format 99"):
        engine.load_checkpoint(tmp_path / "old.pt", "t")


def test_checkpoints_hold_no_pickled_code(tmp_path):
    """Everything in a checkpoint loads with weights_only=True: tensors, numbers, strings, containers."""
    engine.fit(tiny_task(), engine.TrainSettings(epochs=1, device="cpu"), tmp_path, kind="t", log=lambda s: None)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "state", "settings", "metrics"} <= set(ckpt)


def test_incompatible_settings_are_named():
    with pytest.raises(engine.CheckpointError, match="incompatible Spotter version.*warp"):
        engine.settings_from(engine.TrainSettings, {"epochs": 1, "warp": 9}, "run/settings.json")


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(time_budget_min=-1), dict(precision="fp8")])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        engine.TrainSettings(**bad)
