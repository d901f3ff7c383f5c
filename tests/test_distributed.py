"""DistributedDataParallel through torchrun: 2 CPU processes (gloo) against one process."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import histo_slice, tweets_slice

# Seed model (no BatchNorm, no dropout) without augmentation: 2 ranks x 16 images step through exactly
# the batches of one process x 32, so the runs agree up to the order of floating-point sums. fp32: `auto`
# times each batch shape on its own and could pick bf16 for one run and not the other.
COMMON = ["--model", "seed", "--no-augment", "--epochs", "3", "--device", "cpu", "--val-fraction", "0.25",
          "--precision", "fp32"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, wait=True, timeout=600):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "spotter", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def single(*args):
    result = subprocess.run([sys.executable, "-m", "spotter", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return histo_slice(tmp_path_factory.mktemp("ddp") / "histo", 240)


def test_two_processes_match_one(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single("histo", "train", "--data", data, "--out", one, "--batch-size", 32, *COMMON)
    result = torchrun("histo", "train", "--data", data, "--out", two, "--batch-size", 16, *COMMON)
    assert result.stdout.count("epoch   1/3") == 1  # only rank 0 logs

    a, b = pd.read_csv(one / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    assert len(a) == len(b) == 3
    for column in ("train_loss", "val_loss", "val_auc"):
        assert (a[column] - b[column]).abs().max() < 1e-4, column  # stated tolerance
    wa = torch.load(one / "last.pt", weights_only=True)["model"]
    wb = torch.load(two / "last.pt", weights_only=True)["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    assert json.loads((two / "settings.json").read_text())["world_size"] == 2
    assert not list(two.glob("*.tmp"))

    # The checkpoint loads for prediction in a single process.
    single("histo", "predict", two, "--images", data / "test", "--out", tmp_path / "sub.csv")
    assert len(pd.read_csv(tmp_path / "sub.csv")) == 5


def test_killed_distributed_run_resumes(data, tmp_path):
    run = tmp_path / "run"
    args = ["histo", "train", "--data", data, "--out", run, "--batch-size", 16, "--model", "resnet",
            "--epochs", "3", "--device", "cpu", "--crop", "64"]
    proc = torchrun(*args, wait=False)
    deadline = time.time() + 300
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 3:
        pytest.skip("the run finished before it could be killed")
    torchrun(*args, "--resume")
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 3


def test_tweets_train_under_torchrun(tmp_path):
    folder = tweets_slice(tmp_path / "tweets", 300, seed=1)
    # Past --unfreeze-epoch: DDP must pick up the GloVe weights once they start training.
    torchrun("tweets", "train", "--data", folder, "--out", tmp_path / "run", "--epochs", 3, "--unfreeze-epoch", 2,
             "--device", "cpu")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["folds"] == 1 and 0 < summary["threshold"] < 1
    assert len(pd.read_csv(tmp_path / "run" / "fold0" / "metrics.csv")) == 3
