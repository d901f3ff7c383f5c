import json

import h5py
import numpy as np
import pandas as pd
import pytest

from spotter import runs
from spotter.histo.data import DataError, find_sources, pack_folder
from spotter.histo.tiff import read_patch


def test_pack_round_trip_and_no_op(real_histo, tmp_path):
    packed = pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)
    train = packed["train"]
    labels = pd.read_csv(real_histo / "train_labels.csv")
    assert list(train.ids) == list(labels["id"]) and list(train.labels) == list(labels["label"])
    for i in (0, 17, len(train) - 1):
        np.testing.assert_array_equal(train.pixels[i], read_patch(real_histo / "train" / f"{train.ids[i]}.tif"))
    assert len(packed["test"]) == 5 and (packed["test"].labels == -1).all()
    manifest = train.path / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)["train"]
    assert manifest.stat().st_mtime_ns == before  # unchanged source: nothing rewritten
    np.testing.assert_array_equal(again.pixels, train.pixels)


def test_pack_repacks_when_the_source_changes(real_histo, tmp_path):
    pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)
    labels = pd.read_csv(real_histo / "train_labels.csv")
    labels = labels.iloc[:-1]
    labels.to_csv(real_histo / "train_labels.csv", index=False)
    assert len(pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)["train"]) == len(labels)


def test_bad_image_stops_packing_or_is_skipped_and_listed(real_histo, tmp_path):
    victim = sorted((real_histo / "train").iterdir())[3]
    victim.unlink()
    victim.write_bytes(b"")
    with pytest.raises(DataError, match=f"(?s){victim.name}: empty file.*--skip-bad"):
        pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)
    train = pack_folder(real_histo, pack_root=tmp_path / "packs", skip_bad=True, progress=False)["train"]
    assert victim.stem not in set(train.ids) and len(train) == 159
    assert victim.name in (train.path / "skipped.txt").read_text()


@pytest.mark.parametrize("csv_text,message", [
    ("", "empty file"),
    ("id,label\n", "header but no rows"),
    ("name,target\na,1\n", "expected 'id' and 'label'"),
    ("id,label\na,1\na,0\n", "appear more than once"),
    ("id,label\na,2\n", "not 0 or 1.*line 2"),
    ("id,label\na,\n", "not 0 or 1"),
])
def test_labels_csv_problems_are_named(tmp_path, csv_text, message):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        find_sources(tmp_path)


def test_label_without_image(real_histo):
    with open(real_histo / "train_labels.csv", "a") as f:
        f.write("doesnotexist,1\n")
    with pytest.raises(DataError, match="1 ids have no image.*doesnotexist.tif"):
        find_sources(real_histo)


def test_not_a_kaggle_folder(tmp_path):
    with pytest.raises(DataError, match="not the Kaggle layout"):
        find_sources(tmp_path)


def write_pcam(folder, split, x, y):
    with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f.create_dataset("x", data=x)
    if y is not None:
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y)


def test_pcam_hdf5_files_are_read(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 96, 96, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (10, 1, 1, 1), dtype=np.uint8)  # PCam's own label shape
    write_pcam(tmp_path, "train", x, y)
    write_pcam(tmp_path, "test", x[:4], None)
    packed = pack_folder(tmp_path, pack_root=tmp_path / "packs", progress=False)
    np.testing.assert_array_equal(packed["train"].pixels, x)
    np.testing.assert_array_equal(packed["train"].labels, y.reshape(-1))
    assert (packed["test"].labels == -1).all() and len(packed["test"]) == 4


def test_pcam_wrong_shape(tmp_path):
    write_pcam(tmp_path, "train", np.zeros((3, 64, 64, 3), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"\(N, 96, 96, 3\)"):
        find_sources(tmp_path)


def test_missing_images_are_skipped_and_unlabelled_ones_reported(real_histo, tmp_path, capsys):
    with open(real_histo / "train_labels.csv", "a") as f:
        f.write("ghost,1\n")
    (real_histo / "train" / "stray.tif").symlink_to(next((real_histo / "test").iterdir()))
    train = pack_folder(real_histo, pack_root=tmp_path / "packs", skip_bad=True, progress=False)["train"]
    assert len(train) == 160 and "ghost" not in set(train.ids) and "stray" not in set(train.ids)
    assert "ghost.tif: listed in train_labels.csv but missing" in (train.path / "skipped.txt").read_text()
    assert "1 images in" in capsys.readouterr().err


def test_a_run_records_what_skip_bad_left_out(real_histo, tmp_path, capsys):
    from spotter.cli import main
    victim = sorted((real_histo / "train").iterdir())[5]
    victim.unlink()
    victim.write_bytes(b"")
    run = tmp_path / "run"
    assert main(["histo", "train", "--data", real_histo, "--out", run, "--skip-bad", "--model", "resnet",
                 "--epochs", "1", "--batch-size", "32", "--crop", "64", "--device", "cpu"]) == 0
    assert victim.name in capsys.readouterr().err  # the warning names the file, not only a count
    assert victim.name in (run / "skipped.txt").read_text()


def test_repack_catches_a_file_rewritten_with_the_same_size_and_time(real_histo, tmp_path):
    """The pack fingerprint is names, sizes and times (documented); --repack is the way out."""
    import os
    first = pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)["train"]
    victim = real_histo / "train" / f"{first.ids[0]}.tif"
    other = real_histo / "train" / f"{first.ids[1]}.tif"
    stat = victim.stat()
    victim.unlink()
    victim.write_bytes(other.read_bytes())  # same size: Kaggle's TIFFs all are
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    stale = pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False)["train"]
    assert not np.array_equal(stale.read(np.array([0])), read_patch(other)[None])
    fresh = pack_folder(real_histo, pack_root=tmp_path / "packs", progress=False, repack=True)["train"]
    assert np.array_equal(fresh.read(np.array([0])), read_patch(other)[None])


def test_minilm_cache_key_covers_model_and_token_limit(monkeypatch):
    from spotter.tweets import minilm
    key = minilm.cache_key(["a fire"], ["fire"])
    assert minilm.cache_key(["a fire"], ["fire"]) == key
    monkeypatch.setattr(minilm, "MAX_TOKENS", 64)
    assert minilm.cache_key(["a fire"], ["fire"]) != key
    monkeypatch.setattr(minilm, "MAX_TOKENS", 96)
    monkeypatch.setattr(minilm, "model_version", lambda: "another model")
    assert minilm.cache_key(["a fire"], ["fire"]) != key


def test_pcam_runs_validate_on_valid_and_evaluate_on_test(tmp_path):
    """A PatchCamelyon folder's slide-disjoint valid split is the validation set, and evaluate --data
    scores its test split unless told otherwise."""
    from spotter.cli import main
    from spotter.demo import synthetic_patch
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("valid", 16), ("test", 12)):
        y = np.arange(n) % 2
        write_pcam(tmp_path, split, np.stack([synthetic_patch(rng, bool(t)) for t in y]), y.astype(np.uint8))
    run = tmp_path / "run"
    assert main(["histo", "train", "--data", tmp_path, "--out", run, "--model", "seed", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu"]) == 0
    val_ids = runs.open_run(run).validation_ids().tolist()
    assert val_ids == [f"valid_{i}" for i in range(16)]
    assert main(["histo", "evaluate", run]) == 0
    assert json.loads((run / "evaluation.json").read_text())["images"] == 16
    assert main(["histo", "evaluate", run, "--data", tmp_path]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert report["images"] == 12 and report["data"].endswith("(test)")
    assert main(["histo", "evaluate", run, "--data", tmp_path, "--split", "train"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["images"] == 48
