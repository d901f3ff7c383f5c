"""Show that a refactor changed no command's outputs: prepare small real inputs once, run every CLI command on
them with the code on PYTHONPATH, and compare two such output folders file by file.

    python scripts/compare_outputs.py inputs /work/compare/inputs
    PYTHONPATH=/work/base/src python scripts/compare_outputs.py run /work/compare/inputs /work/compare/before
    PYTHONPATH=$PWD/src python scripts/compare_outputs.py run /work/compare/inputs /work/compare/after
    python scripts/compare_outputs.py compare /work/compare/before /work/compare/after

`run` goes on past a failing command (its exit code and stderr are in OUT/commands.json and OUT/logs/).
`compare` exits 1 on any difference; files on one side only are listed but are not a difference by themselves.
The commands run inside OUT with SPOTTER_CACHE=OUT/cache and PYTHONHASHSEED=0; the whole `run` takes 20 to
30 minutes on 2 busy CPU cores (the EfficientNet training and the MiniLM fine-tune, one epoch, are most of it).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TWEETS_MODELS = ("blend", "bigru", "seed-gru", "tfidf", "minilm", "minilm-frozen")
EPOCHS = {"minilm": 1}  # the fine-tune: one epoch keeps the whole run within ~15 minutes on 2 cores
EXPORT_FILES = {"wsinfer": "", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
# Keys and columns that hold timings or machine facts: left out of the comparison.
VOLATILE = re.compile(r"seconds|per_s|_s$|time|measured_at|rss", re.IGNORECASE)
# In logs: durations and throughputs ("12.3 s", "74s", "450 patches/s", "7/s", "0:01:02").
# and the time and process id that start a glog line ("W1207 17:10:34.705000 26847 torch/...").
LOG_TIMINGS = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ |\d+(\.\d+)?\s*([a-z]*/s|s|ms|min)\b|\d+:\d\d(:\d\d)?")


# ---------------------------------------------------------------- inputs: made once, read by both runs

def make_inputs(out: Path, shared: Path, n_histo: int, n_tweets: int, n_eval: int, seed: int = 0) -> None:
    """A Kaggle-layout histology slice (symlinks), a mosaic slide of unseen patches, a tweets slice and a
    labelled tweets CSV disjoint from it."""
    histo_src, tweets_src = shared / "histopathology", shared / "disaster-tweets"
    labels = pd.read_csv(histo_src / "train_labels.csv")
    rng = np.random.default_rng(seed)
    picked = pd.concat([g.sample(n_histo // 2, random_state=int(rng.integers(1 << 30)))
                        for _, g in labels.groupby("label")])
    histo = out / "histo"
    (histo / "train").mkdir(parents=True)
    (histo / "test").mkdir()
    for patch_id in picked["id"]:
        (histo / "train" / f"{patch_id}.tif").symlink_to(histo_src / "train" / f"{patch_id}.tif")
    for path in sorted((histo_src / "test").glob("*.tif")):
        (histo / "test" / path.name).symlink_to(path)
    picked.to_csv(histo / "train_labels.csv", index=False)

    # 8 x 8 patches the runs never saw, half tumour, shuffled, 96 px of white around.
    unseen = labels[~labels["id"].isin(picked["id"])]
    tiles = pd.concat([g.sample(32, random_state=seed + 1) for _, g in unseen.groupby("label")])
    tiles = tiles.sample(frac=1, random_state=seed + 2)
    try:  # where the mosaic helpers live now, and where they lived before
        from spotter import mosaic
    except ImportError:
        from spotter.histo import mosaic
    patches = mosaic.read_patches(histo_src / "train", list(tiles["id"]))
    mosaic.write_mosaic(out / "mosaic.tif", mosaic.mosaic_image(patches, 8, 8, 96))
    tiles.to_csv(out / "mosaic_patches.csv", index=False)

    (out / "tweets").mkdir()
    rows = pd.read_csv(tweets_src / "train.csv").sample(n_tweets + n_eval, random_state=seed)
    rows.iloc[:n_tweets].to_csv(out / "tweets" / "train.csv", index=False)
    rows.iloc[n_tweets:].to_csv(out / "tweets_eval.csv", index=False)
    pd.read_csv(tweets_src / "test.csv").head(100).to_csv(out / "tweets" / "test.csv", index=False)
    print(f"inputs in {out}: {len(picked)} + {len(list((histo / 'test').iterdir()))} patches, mosaic.tif "
          f"(8 x 8), {n_tweets} + {n_eval} labelled tweets, 100 test tweets")


# ---------------------------------------------------------------- run: every command, failures recorded

def commands(inputs: Path) -> list[tuple[str, list[str]]]:
    """(name, arguments of `python -m spotter`) in order; outputs are relative to OUT (the working folder)."""
    h, t = inputs / "histo", inputs / "tweets"
    train = ["--epochs", "2", "--precision", "fp32", "--seed", "0"]
    cmds = [("histo-train-default", ["histo", "train", "--data", h, "--out", "histo/default", *train]),
            ("histo-train-seed", ["histo", "train", "--data", h, "--out", "histo/seed", "--model", "seed", *train])]
    for run in ("default", "seed"):
        cmds += [(f"histo-evaluate-{run}", ["histo", "evaluate", f"histo/{run}"]),
                 (f"histo-evaluate-{run}-tta", ["histo", "evaluate", f"histo/{run}", "--tta"]),
                 (f"histo-predict-{run}", ["histo", "predict", f"histo/{run}", "--images", h / "test",
                                           "--out", f"predictions/histo-{run}.csv"]),
                 (f"histo-predict-{run}-tta", ["histo", "predict", f"histo/{run}", "--images", h / "test",
                                               "--out", f"predictions/histo-{run}-tta.csv", "--tta"])]
    cmds += [("histo-ensemble", ["histo", "ensemble", "histo/default", "histo/seed", "--out", "histo/ens"]),
             ("histo-ensemble-tta", ["histo", "ensemble", "histo/default", "histo/seed", "--out", "histo/ens_tta",
                                     "--tta"]),
             # an ensemble of an ensemble and a run
             ("histo-ensemble-nested", ["histo", "ensemble", "histo/ens", "histo/default", "--out",
                                        "histo/ens_nested"])]
    for run in ("ens", "ens_tta", "ens_nested"):  # ens_tta without --tta: a clear refusal (exit 2)
        cmds += [(f"histo-evaluate-{run}", ["histo", "evaluate", f"histo/{run}"]),
                 (f"histo-predict-{run}", ["histo", "predict", f"histo/{run}", "--images", h / "test",
                                           "--out", f"predictions/histo-{run}.csv"])]
    cmds += [("histo-evaluate-ens_tta-tta", ["histo", "evaluate", "histo/ens_tta", "--tta"]),
             ("histo-predict-ens_tta-tta", ["histo", "predict", "histo/ens_tta", "--images", h / "test",
                                            "--out", "predictions/histo-ens_tta-tta.csv", "--tta"])]
    for run in ("seed", "ens", "ens_nested"):
        cmds.append((f"histo-slide-{run}", ["histo", "slide", f"histo/{run}", "--image", inputs / "mosaic.tif",
                                            "--out", f"slides/{run}", "--stride", "32", "--workers", "0"]))
        for fmt, suffix in EXPORT_FILES.items():
            cmds.append((f"histo-export-{run}-{fmt}", ["histo", "export", f"histo/{run}", "--format", fmt,
                                                       "--out", f"exports/{run}-{fmt}{suffix}"]))
    cmds += [("histo-errors-seed", ["histo", "errors", "histo/seed", "--out", "reports/histo-errors-seed"]),
             ("histo-explain-seed", ["histo", "explain", "histo/seed", "--images", h / "test",
                                     "--out", "explain/seed"])]
    for model in TWEETS_MODELS:
        epochs = ["--epochs", str(EPOCHS[model])] if model in EPOCHS else []
        cmds += [(f"tweets-train-{model}", ["tweets", "train", "--data", t, "--out", f"tweets/{model}", "--model",
                                            model, "--folds", "2", "--precision", "fp32", "--seed", "0", *epochs]),
                 (f"tweets-predict-{model}", ["tweets", "predict", f"tweets/{model}", "--csv", t / "test.csv",
                                              "--out", f"predictions/tweets-{model}.csv", "--proba"]),
                 (f"tweets-evaluate-{model}", ["tweets", "evaluate", f"tweets/{model}", "--csv",
                                               inputs / "tweets_eval.csv"])]
    cmds += [("tweets-ensemble", ["tweets", "ensemble", "tweets/bigru", "tweets/tfidf", "--out", "tweets/ens"]),
             ("tweets-predict-ens", ["tweets", "predict", "tweets/ens", "--csv", t / "test.csv",
                                     "--out", "predictions/tweets-ens.csv", "--proba"]),
             ("tweets-evaluate-ens", ["tweets", "evaluate", "tweets/ens", "--csv", inputs / "tweets_eval.csv"]),
             ("tweets-errors-blend", ["tweets", "errors", "tweets/blend", "--out", "reports/tweets-errors-blend"])]
    return cmds


def write_records(out: Path, code: str, inputs: Path, records: list[dict]) -> None:
    (out / "commands.json").write_text(json.dumps({"code": code, "inputs": str(inputs), "commands": records},
                                                  indent=2))


def run_all(inputs: Path, out: Path, only: str | None) -> int:
    inputs, out = inputs.resolve(), out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPOTTER_CACHE": str(out / "cache"), "PYTHONHASHSEED": "0",
           # absolute, since the commands run inside OUT
           "PYTHONPATH": os.pathsep.join(str(Path(p).resolve()) for p in
                                         os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)}
    code = subprocess.run([sys.executable, "-c", "import spotter; print(spotter.__file__)"], env=env, cwd=out,
                          capture_output=True, text=True).stdout.strip()
    print(f"code under test: {code}")
    # --only reruns some commands and keeps the other records of an earlier run
    earlier = json.loads((out / "commands.json").read_text())["commands"] if only else []
    records = []
    for name, args in commands(inputs):
        if only and not re.search(only, name):
            records += [r for r in earlier if r["name"] == name]
            continue
        argv = [sys.executable, "-m", "spotter", *map(str, args)]
        start = time.perf_counter()
        log = out / "logs" / name
        with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
            rc = subprocess.run(argv, cwd=out, env=env, stdout=stdout, stderr=stderr).returncode
        seconds = time.perf_counter() - start
        tail = Path(f"{log}.err").read_text(errors="replace").strip().splitlines()[-3:] if rc else []
        records.append({"name": name, "command": " ".join(["spotter", *map(str, args)]), "exit_code": rc,
                        "seconds": round(seconds, 1), "stderr_tail": tail})
        print(f"{'ok ' if rc == 0 else 'FAIL'} {rc:3d} {seconds:7.1f} s  {name}" + (f"  | {tail[-1]}" if tail else ""),
              flush=True)
        write_records(out, code, inputs, records)  # after each command, so a stopped run keeps its records
    write_records(out, code, inputs, records)
    failed = [r["name"] for r in records if r["exit_code"]]
    print(f"{len(records)} commands, {len(failed)} failed: {', '.join(failed) or 'none'}")
    return 0


# ---------------------------------------------------------------- compare: two OUT folders, file by file

def normalise_text(text: str, root: Path, code: str | None = None) -> str:
    """Absolute paths inside the OUT folder (and the code's own) become placeholders."""
    text = text.replace(str(root), "<OUT>")
    if code:
        text = text.replace(str(Path(code).parent), "<CODE>")
    return text


def drop_volatile(obj, root: Path):
    if isinstance(obj, dict):
        return {k: drop_volatile(v, root) for k, v in obj.items() if not VOLATILE.search(str(k))}
    if isinstance(obj, list):
        return [drop_volatile(v, root) for v in obj]
    return normalise_text(obj, root) if isinstance(obj, str) else obj


def first_difference(a, b, where: str = "") -> str:
    """The path of the first differing value in two JSON-like objects."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}/{key}: only in {'A' if key in a else 'B'}"
            if a[key] != b[key]:
                return first_difference(a[key], b[key], f"{where}/{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{where}[{k}]")
    return f"{where}: {str(a)[:60]!r} != {str(b)[:60]!r}"


def compare_json(a: Path, b: Path, ra: Path, rb: Path) -> str | None:
    x, y = drop_volatile(json.loads(a.read_text()), ra), drop_volatile(json.loads(b.read_text()), rb)
    return None if x == y else first_difference(x, y)


def compare_csv(a: Path, b: Path, ra: Path, rb: Path) -> str | None:
    def table(path, root):
        rows = list(csv.reader(io.StringIO(normalise_text(path.read_text(), root))))
        keep = [k for k, col in enumerate(rows[0] if rows else []) if not VOLATILE.search(col)]
        return [[row[k] if k < len(row) else None for k in keep] for row in rows]
    x, y = table(a, ra), table(b, rb)
    if x == y:
        return None
    if len(x) != len(y):
        return f"{len(x)} rows != {len(y)}"
    k = next(k for k, (p, q) in enumerate(zip(x, y)) if p != q)
    return f"row {k}: {','.join(map(str, x[k]))[:60]} != {','.join(map(str, y[k]))[:60]}"


def compare_text(a: Path, b: Path, ra: Path, rb: Path, code=(None, None)) -> str | None:
    x = normalise_text(a.read_text(errors="replace"), ra, code[0]).splitlines()
    y = normalise_text(b.read_text(errors="replace"), rb, code[1]).splitlines()
    if a.parent.name == "logs":  # logs: durations and throughputs are left out
        x, y = [LOG_TIMINGS.sub("#", line) for line in x], [LOG_TIMINGS.sub("#", line) for line in y]
    if x == y:
        return None
    k = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return f"line {k + 1}: {(x[k] if k < len(x) else '<end>')[:50]!r} != {(y[k] if k < len(y) else '<end>')[:50]!r}"


def compare_png(a: Path, b: Path, *_) -> str | None:
    from PIL import Image
    x, y = Image.open(a), Image.open(b)
    if (x.mode, x.size) != (y.mode, y.size):
        return f"{x.mode} {x.size} != {y.mode} {y.size}"
    diff = np.asarray(x).astype(np.int64) - np.asarray(y).astype(np.int64)
    return None if not diff.any() else f"{np.count_nonzero(diff)} pixel values differ (max {np.abs(diff).max()})"


def compare_arrays(a: Path, b: Path, *_) -> str | None:
    x, y = np.load(a, allow_pickle=False), np.load(b, allow_pickle=False)
    if isinstance(x, np.lib.npyio.NpzFile):
        if sorted(x.files) != sorted(y.files):
            return f"arrays {sorted(x.files)} != {sorted(y.files)}"
        bad = [k for k in x.files if not np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f")]
        return f"arrays differ: {bad}" if bad else None
    if x.shape != y.shape or x.dtype != y.dtype:
        return f"{x.dtype}{x.shape} != {y.dtype}{y.shape}"
    if np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
        return None
    return f"max abs difference {np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64))):.3g}"


def is_torchscript(path: Path) -> bool:
    return zipfile.is_zipfile(path) and any("/code/" in n for n in zipfile.ZipFile(path).namelist())


def compare_model_outputs(a: Path, b: Path, *_) -> str | None:
    """Exported models: the same fixed random [0, 1] RGB batch through both, within 1e-6."""
    import torch
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    if a.suffix == ".onnx":
        import onnxruntime
        def infer(path):
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    else:
        def infer(path):
            with torch.no_grad():
                return torch.jit.load(str(path), map_location="cpu")(x).numpy()
    ya, yb = infer(a), infer(b)
    if ya.shape != yb.shape:
        return f"output {ya.shape} != {yb.shape}"
    worst = float(np.abs(ya.astype(np.float64) - yb.astype(np.float64)).max())
    return None if worst <= 1e-6 else f"outputs differ by up to {worst:.3g}"


def compare_checkpoint(a: Path, b: Path, *_) -> str | None:
    """Every tensor of the weights ("model", and "trained_model" when an average was validated) exact."""
    import torch
    if is_torchscript(a) or is_torchscript(b):
        return compare_model_outputs(a, b)
    x, y = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    parts = [k for k in ("model", "trained_model") if isinstance(x, dict) and k in x] or [None]
    for part in parts:
        sa, sb = (x, y) if part is None else (x[part], y.get(part, {}))
        if not isinstance(sa, dict):
            return None if repr(sa) == repr(sb) else "contents differ"
        if list(sa) != list(sb):
            return f"{part}: tensor names differ"
        bad = [k for k in sa if not (torch.is_tensor(sa[k]) and torch.equal(sa[k], sb[k]) or
                                     not torch.is_tensor(sa[k]) and sa[k] == sb[k])]
        if bad:
            return f"{part}: {len(bad)} tensors differ, e.g. {bad[0]}"
    return None


def compare_commands(a: Path, b: Path, *_) -> str | None:
    x, y = ({r["name"]: r["exit_code"] for r in json.loads(p.read_text())["commands"]} for p in (a, b))
    diff = [f"{k}: {x.get(k)} -> {y.get(k)}" for k in sorted(set(x) | set(y), key=str) if x.get(k) != y.get(k)]
    return "; ".join(diff) or None


COMPARERS = {".json": compare_json, ".geojson": compare_json, ".csv": compare_csv, ".png": compare_png,
             ".npy": compare_arrays, ".npz": compare_arrays, ".pt": compare_checkpoint, ".pth": compare_checkpoint,
             ".onnx": compare_model_outputs}
TEXT = {".txt", ".out", ".err", ".html", ".md", ".log", ".svg", ".tsv", ""}


def compare_file(a: Path, b: Path, ra: Path, rb: Path, code) -> str | None:
    if a.name == "commands.json" and a.parent == ra:
        return compare_commands(a, b)
    if a.suffix in COMPARERS:
        return COMPARERS[a.suffix](a, b, ra, rb)
    if a.suffix in TEXT:
        return compare_text(a, b, ra, rb, code)
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def compare(a: Path, b: Path) -> int:
    a, b = a.resolve(), b.resolve()
    def listing(root):  # the cache (packs, precision choices, embeddings) is the code's business, not an output
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "cache"}
    code = tuple(json.loads((r / "commands.json").read_text()).get("code") if (r / "commands.json").exists()
                 else None for r in (a, b))
    left, right = listing(a), listing(b)
    rows, failed = [], 0
    for rel in sorted(left | right, key=str):
        if rel not in right or rel not in left:
            rows.append((str(rel), f"only in {'A' if rel in left else 'B'}", ""))
            continue
        try:
            detail = compare_file(a / rel, b / rel, a, b, code)
        except Exception as err:  # a file that cannot be read back is a difference, not a crash of the table
            detail = f"could not compare: {type(err).__name__}: {err}"
        failed += detail is not None
        rows.append((str(rel), "same" if detail is None else "DIFFERS", detail or ""))
    width = max((len(r[0]) for r in rows), default=4)
    for name, status, detail in rows:
        print(f"{name:<{width}}  {status:<9} {detail}")
    only = sum(r[1].startswith("only") for r in rows)
    print(f"\n{len(rows)} files: {len(rows) - failed - only} same, {failed} differ, {only} on one side only")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = parser.add_subparsers(dest="command", required=True)
    p = cmds.add_parser("inputs", help="prepare the inputs once (a histology, a tweets slice and a mosaic slide)")
    p.add_argument("dir", type=Path)
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("SPOTTER_SHARED_DATA", SHARED)))
    p.add_argument("--histo", type=int, default=600, help="labelled patches (stratified)")
    p.add_argument("--tweets", type=int, default=600, help="labelled tweets to train on")
    p.add_argument("--eval-tweets", type=int, default=200, help="other labelled tweets, for tweets evaluate")
    p = cmds.add_parser("run", help="run every command on INPUTS into OUT with the code on PYTHONPATH")
    p.add_argument("inputs", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--only", help="regular expression: rerun only the commands whose name matches, keeping the "
                                  "other records of OUT/commands.json (the caller clears their old outputs)")
    p = cmds.add_parser("compare", help="compare two OUT folders; exit 1 on any difference")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "inputs":
        make_inputs(args.dir, args.shared, args.histo, args.tweets, args.eval_tweets)
        return 0
    if args.command == "run":
        return run_all(args.inputs, args.out, args.only)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
