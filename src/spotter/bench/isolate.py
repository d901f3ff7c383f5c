"""Each stage in a fresh process, so that its peak resident memory is its own and a stage that dies or
hangs cannot take the others with it."""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import resource
import time
import traceback
from typing import Any

import torch

STAGE_TIMEOUT_S = 1800.0


def _in_child(queue, fn, args):
    try:
        torch.manual_seed(0)
        result = fn(*args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def isolated(fn, *args, timeout_s: float = STAGE_TIMEOUT_S) -> dict[str, Any]:
    """Run one stage in a fresh process; its peak RSS is then its own. A stage that raises, dies (the
    kernel kills it for memory) or passes `timeout_s` comes back as {"failed": why}."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_in_child, args=(queue, fn, args))
    process.start()
    deadline = time.monotonic() + timeout_s
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not process.is_alive():
                try:  # it may have put its result just before exiting
                    result = queue.get(timeout=2.0)
                except queue_module.Empty:
                    code = process.exitcode
                    why = (f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
                           if code is not None and code < 0 else f"exited with code {code}")
                    result = {"failed": f"{why} before reporting"}
            elif time.monotonic() > deadline:
                process.kill()
                result = {"failed": f"no result after {timeout_s:.0f} s: stopped"}
    process.join()
    if "error" in result:
        print(f"benchmark stage {fn.__name__} failed:\n{result['error']}")
        result = {"failed": result["error"].strip().splitlines()[-1]}
    return result
