"""One sharding function for every task: under torchrun every rank must take the same number of steps,
or the ranks with a step more wait forever in DDP's gradient all-reduce."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spotter import engine

from test_distributed import free_port
import conftest


@pytest.mark.parametrize("n,batch,world", [(n, b, w) for n, b, w in itertools.product((1, 7, 31, 64, 250, 6090),
                                                                                        (1, 8, 32), (1, 2, 3, 4))])
def test_every_rank_takes_the_same_steps(n, batch, world):
    order = np.random.default_rng(n).permutation(n)
    for drop_last in (False, True):
        per_rank = [list(engine.shard_batches(order, batch, (rank, world), drop_last=drop_last,
                                              even=True)) for rank in range(world)]
        counts = {len(batches) for batches in per_rank}
        assert counts == {engine.shard_steps(n, batch, world, drop_last=drop_last)}
        assert all(len(rows) > 0 for batches in per_rank for rows in batches)
        seen = np.concatenate([rows for batches in per_rank for rows in batches] or [np.zeros(0, int)])
        assert len(seen) == len(set(seen.tolist()))  # no row twice
        if not drop_last:  # at most a final batch of fewer rows than ranks is left out
            assert n - len(seen) < world


def test_validation_shards_cover_every_row_once():
    order = np.arange(513)
    rows = np.concatenate([r for rank in range(2) for r in engine.shard_batches(order, 256, (rank, 2))])
    assert sorted(rows.tolist()) == list(range(513))


def test_single_process_batches_are_unchanged():
    order = np.random.default_rng(0).permutation(100)
    batches = list(engine.shard_batches(order, 32, even=True))
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert np.array_equal(np.concatenate(batches), order)


@pytest.mark.distributed
@pytest.mark.parametrize("model,rows,batch", [("bigru", 300, 100),
                                              pytest.param("minilm", 80, 24, marks=pytest.mark.slow)])
def test_uneven_last_batch_does_not_hang_under_torchrun(tmp_path, model, rows, batch):
    """The training split leaves a last global batch shorter than one rank's share (bigru: 240 rows in
    global batches of 200, 40 left; minilm: 64 in 48, 16 left): rank 1 used to skip it and hang. Every
    epoch, both ranks take the same number of steps and every training row is used exactly once."""
    folder = conftest.tweets_slice(tmp_path / "tweets", rows, seed=1, n_test=5)
    record = tmp_path / "record"
    record.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(Path(__file__).parent / "record_shards.py"), "tweets", "train",
               "--data", str(folder), "--out", str(tmp_path / "run"), "--model", model, "--epochs", "2",
               "--batch-size", str(batch), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECORD_SHARDS": str(record),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()
    ranks = [[json.loads(line) for line in (record / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    folds = json.loads((tmp_path / "run" / "summary.json").read_text())["folds"]
    assert len(ranks[0]) == len(ranks[1]) == 2 * folds  # one training pass per epoch of every fold
    for epoch0, epoch1 in zip(*ranks):
        assert epoch0["rows"] == epoch1["rows"]
        assert len(epoch0["batches"]) == len(epoch1["batches"]) == -(-len(epoch0["rows"]) // (2 * batch))
        used = [row for epoch in (epoch0, epoch1) for rows in epoch["batches"] for row in rows]
        assert sorted(used) == epoch0["rows"]  # every row once: none left out, none twice
