"""Run the Spotter CLI and SIGKILL this process as training step N begins (steps counted over the whole
run, every fold): a crash at an exact, repeatable point, for the resume tests.

    python tests/kill_at_step.py N histo train --data ... --out ...
"""
import os
import signal
import sys

from spotter import engine
from spotter.cli import main

kill_at = int(sys.argv[1])
real_step = engine.train_step
steps = 0


def counting_step(*args, **kwargs):
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(*args, **kwargs)


engine.train_step = counting_step
code = main(sys.argv[2:])
# Never a quiet success: a run that ended before step N was not killed where the test meant it to be.
print(f"kill_at_step: the run ended after {steps} steps, before step {kill_at} (exit {code})", file=sys.stderr)
sys.exit(code or 3)
