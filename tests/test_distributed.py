"""DistributedDataParallel through torchrun: 2 CPU processes (gloo) against one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import histo_slice, tweets_slice

pytestmark = pytest.mark.distributed

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


def test_killed_distributed_run_resumes_exactly(data, tmp_path):
    """Both ranks killed (SIGKILL) inside epoch 2, then resumed: the same weights and metrics as an
    uninterrupted two-process run, dropout-free ResNet with BatchNorm statistics kept per rank."""
    args = ["histo", "train", "--data", data, "--batch-size", 16, "--model", "resnet", "--epochs", "3",
            "--device", "cpu", "--crop", "64"]
    torchrun(*args, "--out", tmp_path / "straight")
    # 216 training patches in global batches of 32: 6 steps an epoch; step 9 is inside epoch 2.
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                             str(Path(__file__).parent / "kill_at_step.py"), "9", *map(str, args),
                             "--out", str(tmp_path / "run")],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state"]["epoch"] == 1
    torchrun(*args, "--out", tmp_path / "run", "--resume")
    a, b = (pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=["seconds", "per_s"]) for name in ("straight", "run"))
    pd.testing.assert_frame_equal(a, b)
    wa, wb = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("straight", "run"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def test_tweets_train_under_torchrun(tmp_path):
    folder = tweets_slice(tmp_path / "tweets", 300, seed=1)
    # Past --unfreeze-epoch: DDP must pick up the GloVe weights once they start training.
    torchrun("tweets", "train", "--data", folder, "--out", tmp_path / "run", "--model", "bigru", "--folds", 1,
             "--epochs", 3, "--unfreeze-epoch", 2, "--device", "cpu")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["folds"] == 1 and 0 < summary["threshold"] < 1
    assert len(pd.read_csv(tmp_path / "run" / "fold0" / "metrics.csv")) == 3


def two_nodes(tmp_path, out, *args):
    """`torchrun --nnodes=2` twice on loopback: two "nodes" of one process each, each with its own cache
    folder and working folder, as on two machines."""
    port = free_port()
    procs = []
    for node in (0, 1):
        home = tmp_path / f"node{node}"
        (home / "cache").mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                   "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "spotter",
                   *map(str, args), "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SPOTTER_CACHE": str(home / "cache"),
               "PYTHONPATH": os.pathsep.join(sys.path)}
        procs.append(subprocess.Popen(command, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return [(p.wait(timeout=600), p.stderr.read()) for p in procs]


def test_two_nodes_pack_their_own_caches_and_share_the_run_folder(data, tmp_path):
    args = ["histo", "train", "--data", data, "--model", "seed", "--epochs", 1, "--batch-size", 16, "--device", "cpu"]
    results = two_nodes(tmp_path, tmp_path / "shared-run", *args)
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    for node in (0, 1):  # each node packed once into its own cache
        assert len(list((tmp_path / f"node{node}" / "cache" / "packs").glob("*/train/manifest.json"))) == 1
        assert not list((tmp_path / f"node{node}" / "cache" / "packs").glob("*/*.partial*"))
    assert (tmp_path / "shared-run" / "last.pt").exists()

    # A relative --out is a different folder on each "node": refused with a clear error, not a hang.
    results = two_nodes(tmp_path, "run", *args)
    assert all(code != 0 for code, _ in results)
    assert any("needs --out on a filesystem every node shares" in err for _, err in results)
