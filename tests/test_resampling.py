"""The resampling check (spotter.bench.resampling, scripts/resampling_check.py): its ways of reading a finer
level back to 96 px are what they claim, and the script runs end to end on a tiny run."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from spotter import runs
from spotter.bench import resampling
from spotter.cli import main

SCRIPT = Path(__file__).parent.parent / "scripts" / "resampling_check.py"


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("scale", [2, 4])
def test_box_ways_return_a_pixel_repeated_patch_exactly(patches, scale):
    # A level made by repeating pixels holds the patch's exact information: a box mean must give it back.
    fine = patches.repeat(scale, axis=1).repeat(scale, axis=2)
    assert np.array_equal(resampling.area(fine), patches)
    assert np.array_equal(resampling.histo_slide(fine), patches)


def test_bilinear_aa_is_not_a_box_mean(patches):
    # Antialiased bilinear's triangle spans two output pixels: it blurs even a pixel-repeated level (this is
    # why WSInfer's reading of a 2x level differs from the level the scanner wrote).
    fine = patches.repeat(2, axis=1).repeat(2, axis=2)
    assert np.abs(resampling.bilinear_aa(fine).astype(int) - patches).max() > 20


@pytest.mark.parametrize("side", [192, 384, 370])
def test_pil_bilinear_is_torch_antialiased_bilinear(side):
    # torchvision's Resize on a PIL image calls PIL's BILINEAR; it is the antialiased bilinear filter torch
    # implements (on float images, so no uint8 rounding enters the comparison).
    x = np.random.default_rng(side).random((side, side)).astype(np.float32)
    pil = np.asarray(Image.fromarray(x, "F").resize((96, 96), Image.BILINEAR))
    torch_aa = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(96, 96), mode="bilinear",
                                               antialias=True, align_corners=False)[0, 0].numpy()
    assert np.abs(pil - torch_aa).max() < 1e-4


@pytest.mark.parametrize("scale, side", [(2, 192), (4, 384), (3.857, 370)])
def test_sizes(patches, scale, side):
    fine = resampling.upsample(patches, scale, blur=0.5)
    assert fine.shape == (5, side, side, 3) and fine.dtype == np.uint8
    for way, back in resampling.way_functions(0.972).items():
        if way == "area" and side % 96:
            with pytest.raises(ValueError, match="integer scale"):
                back(fine)
            continue
        out = back(fine)
        assert out.shape == patches.shape and out.dtype == np.uint8
        # bicubic up then down again stays close to the patch (random noise: the hardest case)
        assert np.abs(out.astype(float) - patches).mean() < 80


def test_blur_softens(patches):
    sharp, soft = resampling.upsample(patches, 2), resampling.upsample(patches, 2, blur=1.0)
    assert soft.std() < sharp.std()


def test_the_script_runs_end_to_end_on_a_tiny_run(tmp_path):
    data = conftest.histo_slice(tmp_path / "data", 160, n_test=1)
    run = tmp_path / "seed"
    assert main(["histo", "train", "--data", data, "--out", run, "--model", "seed", "--epochs", "1", "--device", "cpu",
                 "--precision", "fp32", "--val-fraction", "0.25", "--pack-dir", tmp_path / "packs"]) == 0
    out = tmp_path / "resampling.json"
    script = runpy.run_path(str(SCRIPT), run_name="imported")
    args = [str(run), "--data", str(data), "--n", "24", "--scales", "2", "3.857", "--out", str(out)]
    assert script["main"](args) == 0
    report = json.loads(out.read_text())
    (result,) = report["runs"]
    assert result["model"] == "seed" and result["n"] == 24
    rows = [(r["scale"], r["way"]) for r in result["rows"]]
    assert rows == [(2, "bilinear-aa"), (2, "area"), (2, "histo-slide"),
                    (3.857, "bilinear-aa"), (3.857, "histo-slide")]
    for row in result["rows"]:
        assert 0 <= row["mean_abs_dp"] <= row["max_abs_dp"] <= 1 and row["mean_abs_dpixel"] > 0
        assert row["auc_ci95"][0] <= row["auc_ci95"][1]
    table = resampling.format_table(report["runs"])
    assert len(table.splitlines()) == 2 + 1 + len(rows)
    assert "| seed | model's µm/px | none | 0 |" in table


def test_a_run_from_other_data_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "folds.csv").write_text("id,fold\nnot-a-patch,0\n")
    (tmp_path / "train_labels.csv").write_text("id,label\nsomething-else,1\n")
    fake = runs.Run(run, "histo")
    with pytest.raises(runs.RunError, match="not-a-patch.*--data"):
        resampling.held_out_patches(fake, tmp_path, 10)
