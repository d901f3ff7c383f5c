"""Run the Spotter CLI and record, per rank, the rows of every training batch that `engine.shard_batches`
gives (`even=True` calls, one JSON line per call that was iterated to its end), for the sharding tests.

    RECORD_SHARDS=folder python tests/record_shards.py tweets train --data ... --out ...
"""
import json
import os
import sys
from pathlib import Path

from spotter import engine
from spotter.cli import main

real_shard_batches = engine.shard_batches
record = Path(os.environ["RECORD_SHARDS"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"


def recording_shard_batches(order, *args, **kwargs):
    batches = []
    for rows in real_shard_batches(order, *args, **kwargs):
        batches.append([int(r) for r in rows])
        yield rows
    if kwargs.get("even"):
        with open(record, "a") as f:
            f.write(json.dumps({"rows": sorted(int(r) for r in order), "batches": batches}) + "\n")


engine.shard_batches = recording_shard_batches
sys.exit(main(sys.argv[1:]))
