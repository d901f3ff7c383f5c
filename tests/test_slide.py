"""Whole slides with known answers: mosaics of real Kaggle patches written as tiled pyramidal TIFFs
(level 0 at 0.486 µm/px, level 1 at the patches' own 0.972, then halvings), scored by the ResNet the serve
tests share (tests/serve_runs.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from PIL import Image
from shapely.geometry import box, shape

import serve_runs
from conftest import HISTO
from spotter import mosaic
from spotter.cli import main
from spotter.histo import slide, tissue, wsi
from spotter.histo.predictor import load_run
from spotter.metrics import roc_auc

MARGIN = 192  # model pixels of white around each mosaic: 2 cells at stride 96, 6 at stride 32
P = 96


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The serve tests' ResNet (trained once per session on 2,000 real patches), and the labelled patches it
    never saw."""
    root = tmp_path_factory.mktemp("slides")
    run, data = serve_runs.histo_run(tmp_path_factory), serve_runs.histo_data(tmp_path_factory)
    labels = pd.read_csv(HISTO / "train_labels.csv")
    unseen = labels[~labels["id"].isin(pd.read_csv(data / "train_labels.csv")["id"])]
    return {"root": root, "run": run, "unseen": unseen, "predictor": load_run(run, "cpu")}


def write(path, patches, rows, cols, **options):
    mosaic.write_mosaic(path, mosaic.mosaic_image(patches, rows, cols, MARGIN), **options)
    return path


@pytest.fixture(scope="module")
def labelled(env):
    """12 x 12 unseen patches, half of them tumour, in a mosaic aligned to the stride-96 grid."""
    picked = pd.concat([g.sample(72, random_state=1) for _, g in env["unseen"].groupby("label")])
    picked = picked.sample(frac=1, random_state=2)
    patches = mosaic.read_patches(HISTO / "train", list(picked["id"]))
    path = write(env["root"] / "labelled.tif", patches, 12, 12)
    return path, picked, patches


@pytest.fixture(scope="module")
def one_tumour(env):
    """6 x 6 normal patches with the clearest tumour patch at row 2, column 4."""
    pool = env["unseen"].sample(160, random_state=3)
    patches = mosaic.read_patches(HISTO / "train", list(pool["id"]))
    probs = env["predictor"].predict_proba(patches)
    stained = (tissue.saturation(patches) > 40).mean(axis=(1, 2)) > 0.7  # well on tissue
    normal = np.flatnonzero((pool["label"].to_numpy() == 0) & stained)
    normal = normal[np.argsort(probs[normal])][:35]
    tumour = np.flatnonzero(pool["label"].to_numpy() == 1)
    tumour = tumour[np.argmax(probs[tumour])]
    order = list(normal[:16]) + [tumour] + list(normal[16:])  # index 16 = row 2, column 4
    return write(env["root"] / "one_tumour.tif", patches[order], 6, 6), patches[tumour]


def test_stride_96_cells_equal_histo_predict_and_the_margins_are_not_scored(env, labelled, tmp_path):
    path, picked, patches = labelled
    summary = slide.slide(env["run"], path, tmp_path / "out", stride=96, device="cpu")
    heat = np.load(tmp_path / "out" / "heatmap.npy")
    assert heat.dtype == np.float16 and summary["level"] == 1 and summary["mpp"] == pytest.approx(0.486)
    margin = MARGIN // P
    assert np.isnan(heat[:margin]).all() and np.isnan(heat[-margin:]).all()
    assert np.isnan(heat[:, :margin]).all() and np.isnan(heat[:, -margin:]).all()
    cells = heat[margin:margin + 12, margin:margin + 12].astype(np.float64).ravel()
    scored = ~np.isnan(cells)
    labels = picked["label"].to_numpy()
    assert scored[labels == 1].all() and scored.mean() > 0.95, "the mask errs towards tissue"

    folder = tmp_path / "patches"
    folder.mkdir()
    for k, patch_id in enumerate(picked["id"]):  # the k prefix keeps the mosaic's order
        (folder / f"{k:03d}_{patch_id}.tif").symlink_to(HISTO / "train" / f"{patch_id}.tif")
    assert main(["histo", "predict", env["run"], "--images", folder, "--out", tmp_path / "sub.csv",
                 "--device", "cpu"]) == 0
    predicted = pd.read_csv(tmp_path / "sub.csv", dtype={"id": str}).sort_values("id")["label"].to_numpy()
    assert np.abs(cells[scored] - predicted[scored]).max() < 0.01  # bf16 and float16 rounding
    heat_auc, patch_auc = roc_auc(labels[scored], cells[scored]), roc_auc(labels[scored], predicted[scored])
    assert heat_auc == pytest.approx(patch_auc, abs=0.005)
    assert patch_auc > 0.7, "the run learned to tell tumour from normal tissue"

    tiles = pd.read_csv(tmp_path / "out" / "tiles.csv")
    assert list(tiles.columns) == ["minx", "miny", "width", "height", "prob_tumor"]
    assert len(tiles) == scored.sum() and (tiles[["width", "height"]] == 2 * P).all().all()
    assert (tiles["minx"] % (2 * P) == 0).all() and tiles["minx"].min() >= 2 * MARGIN
    slide_json = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert slide_json["tiles_scored"] == len(tiles) and slide_json["peak_rss_mb"] > 0


@pytest.mark.parametrize("stride", [96, pytest.param(32, marks=pytest.mark.slow)])
def test_the_hottest_cell_is_the_tumour_patch_at_every_stride_and_level(env, one_tumour, tmp_path, stride):
    """The hottest cell lies on the one tumour patch whether the slide is read at 0.486 µm/px (shrunk 2x),
    0.972 (as is) or 1.944 (enlarged 2x); and levels 0 and 1, which hold the same pixels, give the same map."""
    path, _ = one_tumour
    left, top = (MARGIN + 4 * P) * 2, (MARGIN + 2 * P) * 2  # the tumour patch in level-0 pixels
    heats = {}
    for level in (0, 1, 2):
        out = tmp_path / f"level{level}"
        slide.slide(env["run"], path, out, stride=stride, level=level, device="cpu", predictor=env["predictor"],
                    workers=1)
        heats[level] = np.load(out / "heatmap.npy").astype(np.float64)
        tiles = pd.read_csv(out / "tiles.csv")
        hot = tiles.loc[tiles["prob_tumor"].idxmax()]
        assert left <= hot["minx"] and hot["minx"] + hot["width"] <= left + 2 * P, (level, hot.to_dict())
        assert top <= hot["miny"] and hot["miny"] + hot["height"] <= top + 2 * P, (level, hot.to_dict())
    np.testing.assert_array_equal(np.isnan(heats[0]), np.isnan(heats[1]))
    np.testing.assert_allclose(heats[0], heats[1], atol=0.01)


@pytest.mark.slow  # the fast set keeps a few slide tests on the same trained run
def test_overlapping_centres_are_averaged_exactly(env, one_tumour, tmp_path):
    """Stride 16: each cell is the mean of the 2x2 patches whose labelled centre covers it, recomputed here
    from patches cut straight out of the file's level 1 (the patches' own pixels)."""
    path, _ = one_tumour
    predictor = env["predictor"]
    slide.slide(env["run"], path, tmp_path / "out", stride=16, device="cpu", predictor=predictor, workers=0)
    heat = np.load(tmp_path / "out" / "heatmap.npy").astype(np.float64)
    level1 = tifffile.imread(path, level=1)
    canvas = np.full((level1.shape[0] + 2 * P, level1.shape[1] + 2 * P, 3), 255, np.uint8)
    canvas[P:-P, P:-P] = level1  # white beyond the edges, as the reader pads
    expected_sum, expected_count = np.zeros_like(heat), np.zeros_like(heat)
    source = wsi.open_slide(path)  # which patches lie on tissue: the module's own decision
    grid = slide.make_grid(source, predictor.mpp, 16)
    thumb, scale = source.thumbnail(slide.THUMBNAIL)
    on_tissue = slide.patches_on_tissue(slide.cell_tissue(tissue.tissue_mask(thumb, source.mpp * scale), scale, grid), grid)
    origins = list(zip(*np.nonzero(on_tissue)))
    assert len(origins) > 1000
    # patch (i, j)'s labelled centre covers cells i..i+1, j..j+1; its top-left is 32 px above-left of cell (i, j)
    cuts = np.stack([canvas[P + 16 * i - 32:P + 16 * i + 64, P + 16 * j - 32:P + 16 * j + 64] for i, j in origins])
    probs = predictor.predict_proba(cuts)
    for (i, j), p in zip(origins, probs):
        expected_sum[i:i + 2, j:j + 2] += p
        expected_count[i:i + 2, j:j + 2] += 1
    covered = expected_count > 0
    assert (expected_count == 4).sum() > 500 and (expected_count == 1).any()
    np.testing.assert_array_equal(np.isnan(heat), ~covered)
    np.testing.assert_allclose(heat[covered], expected_sum[covered] / expected_count[covered], atol=0.01)


@pytest.mark.slow  # the fast set keeps a few slide tests on the same trained run
def test_missing_mpp_is_a_clear_error_and_mpp_fixes_it(env, one_tumour, tmp_path, capsys):
    _, tumour_patch = one_tumour
    path = write(tmp_path / "nompp.tif", np.repeat(tumour_patch[None], 16, axis=0), 4, 4, mpp=None)
    result = subprocess.run([sys.executable, "-m", "spotter", "histo", "slide", str(env["run"]), "--image", str(path),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nompp.tif" in result.stderr and "--mpp" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "slide.json").exists()
    assert main(["histo", "slide", env["run"], "--image", path, "--out", tmp_path / "out", "--mpp", "0.486",
                 "--stride", "96", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "out" / "slide.json").read_text())
    assert summary["mpp_source"] == "--mpp" and summary["level"] == 1 and summary["tiles_scored"] == 16


@pytest.mark.slow  # the fast set keeps a few slide tests on the same trained run
def test_geojson_opens_as_level0_geometry(env, labelled, tmp_path):
    path, _, _ = labelled
    out = tmp_path / "out"
    summary = slide.slide(env["run"], path, out, stride=32, device="cpu", predictor=env["predictor"])
    width, height = summary["level0_size"]
    tiles = pd.read_csv(out / "tiles.csv")
    features = json.loads((out / "tiles.geojson").read_text())["features"]
    assert len(features) == len(tiles) == summary["tiles_scored"]
    for feature, row in zip(features[:50], tiles.itertuples()):
        assert feature["properties"]["objectType"] == "tile"
        assert shape(feature["geometry"]).equals(box(row.minx, row.miny, row.minx + row.width, row.miny + row.height))
        assert feature["properties"]["measurements"]["prob_tumor"] == pytest.approx(row.prob_tumor, abs=1e-6)
    regions = json.loads((out / "regions.geojson").read_text())["features"]
    assert regions, "a mosaic of half tumour patches has tumour regions"
    polygons = [shape(f["geometry"]) for f in regions]
    assert all(p.is_valid and p.geom_type == "Polygon" for p in polygons)
    hot = tiles[tiles["prob_tumor"] >= 0.5]
    hot_area = float((hot["width"] * hot["height"]).sum())
    assert sum(p.area for p in polygons) == pytest.approx(hot_area)  # the regions are exactly the hot cells
    assert shapely.union_all(polygons).bounds[2] <= width and shapely.union_all(polygons).bounds[3] <= height
    mm2 = sum(f["properties"]["measurements"]["area_mm2"] for f in regions)
    assert mm2 == pytest.approx(hot_area * (summary["mpp"] / 1000) ** 2, rel=1e-4)
    assert summary["tumour_area_mm2"] == pytest.approx(mm2, rel=0.01)
    assert regions[0]["properties"]["classification"]["name"] == "Tumor"
    for name in ("heatmap.png", "overlay.png", "tissue.png"):
        assert Image.open(out / name).size[0] >= 1000
    assert not list(out.glob("*.tmp"))


def test_bad_slides_are_named_and_a_folder_goes_on_past_them(env, one_tumour, tmp_path):
    good, _ = one_tumour
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "a_good.tif").symlink_to(good)
    data = good.read_bytes()
    (folder / "b_truncated.tif").write_bytes(data[:len(data) // 3])
    Image.fromarray(np.full((3000, 3000, 3), 250, np.uint8)).save(folder / "c_blank.png")
    Image.fromarray(np.full((60, 60, 3), 120, np.uint8)).save(folder / "d_tiny.png")
    Image.fromarray(np.full((400, 400), 120, np.uint8)).save(folder / "e_grey.png")
    rows = slide.slides(env["run"], folder, tmp_path / "out", device="cpu", mpp=0.486, stride=96, workers=0)
    table = pd.read_csv(tmp_path / "out" / "slides.csv")
    assert list(table["slide"]) == [r["slide"] for r in rows]
    status = dict(zip(table["slide"], table["status"]))
    assert status == {"a_good.tif": "ok", "b_truncated.tif": "error", "c_blank.png": "error",
                      "d_tiny.png": "error", "e_grey.png": "error"}
    errors = dict(zip(table["slide"], table["error"].fillna("")))
    assert "b_truncated.tif" in errors["b_truncated.tif"]
    assert "no tissue" in errors["c_blank.png"]
    assert "smaller than one 96-pixel patch" in errors["d_tiny.png"]
    assert "unsupported image mode L" in errors["e_grey.png"]
    assert (tmp_path / "out" / "a_good" / "slide.json").exists()
    assert not (tmp_path / "out" / "b_truncated" / "slide.json").exists()


def test_progress_callback_counts_every_tile(env, one_tumour, tmp_path):
    calls = []
    summary = slide.slide(env["run"], one_tumour[0], tmp_path / "out", stride=32, batch_size=64, device="cpu",
                          predictor=env["predictor"], workers=0, on_progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (summary["tiles_scored"], summary["tiles_scored"])
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 1


@pytest.mark.distributed
def test_torchrun_ranks_share_the_slides(env, one_tumour, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("s1.tif", "s2.tif", "s3.tif"):
        (folder / name).symlink_to(one_tumour[0])
    from test_distributed import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "spotter", "histo", "slide", str(env["run"]),
               "--image", str(folder), "--out", str(tmp_path / "out"), "--stride", "96", "--device", "cpu",
               "--workers", "0"]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out" / "slides.csv")
    assert sorted(table["slide"]) == ["s1.tif", "s2.tif", "s3.tif"] and (table["status"] == "ok").all()
    assert table["max_prob"].nunique() == 1  # the same slide three times, whichever rank scored it
    assert result.stdout.count("ranking in") == 1  # rank 0 alone writes slides.csv


# ---------------------------------------------------------------- exports

@pytest.fixture(scope="module")
def unseen_patches(env):
    picked = env["unseen"].sample(64, random_state=7)
    return mosaic.read_patches(HISTO / "train", list(picked["id"]))


def as_tensor_input(patches):
    """What WSInfer's ToTensor gives: float RGB in [0, 1], (N, 3, H, W)."""
    import torch

    return torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_matches_spotter(env, unseen_patches, tmp_path, fmt):
    import torch

    from spotter.histo import export

    path = export.export(env["run"], fmt, tmp_path / f"model.{fmt}")
    expected = load_run(env["run"], "cpu", precision="fp32").predict_proba(unseen_patches)
    x = as_tensor_input(unseen_patches)
    if fmt == "torchscript":
        logits = torch.jit.load(str(path)).eval()(x).detach().numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"image": x.numpy()})[0]
    assert logits.shape == (len(unseen_patches), 1)
    probs = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    assert np.abs(probs - expected).max() < 1e-5
    assert expected.std() > 0.05  # real, varied predictions, not a constant


def wsinfer_resize(image: Image.Image, size: int) -> Image.Image:
    """torchvision's `Resize(size)` for an int size on a PIL image, as documented: the shorter edge becomes
    `size`, the longer keeps the aspect ratio (int(size * long / short)); bilinear, which on PIL images is
    always antialiased (PIL's own `resize`, which torchvision calls)."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = size, int(size * long / short)
    new = (new_short, new_long) if w <= h else (new_long, new_short)
    return image if new == (w, h) else image.resize(new, Image.BILINEAR)


def wsinfer_to_tensor(image: Image.Image):
    """torchvision's `ToTensor` on an RGB PIL image: HWC uint8 -> CHW float32 divided by 255."""
    import torch

    return torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1).contiguous().float().div(255)


def apply_wsinfer_transforms(transforms, patches):
    """A WSInfer config's transform list applied patch by patch, by name, as WSInfer does before batching."""
    import torch

    steps = {"Resize": wsinfer_resize, "ToTensor": wsinfer_to_tensor}
    out = []
    for patch in patches:
        value = Image.fromarray(patch)
        for t in transforms:
            value = steps[t.name](value, **(t.arguments or {}))
        out.append(value)
    return torch.stack(out)


def test_wsinfer_transforms_follow_torchvisions_definitions():
    rng = np.random.default_rng(0)
    tall = Image.fromarray(rng.integers(0, 256, (120, 100, 3), dtype=np.uint8))
    assert wsinfer_resize(tall, 96).size == (96, 115)  # (w, h): the shorter edge (width) is 96
    wide = tall.transpose(Image.Transpose.TRANSPOSE)
    assert wsinfer_resize(wide, 96).size == (115, 96)
    np.testing.assert_array_equal(np.asarray(wsinfer_resize(tall, 96)),
                                  np.asarray(tall.resize((96, 115), Image.BILINEAR)))
    same = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(wsinfer_resize(same, 96)), np.asarray(same))
    tensor = wsinfer_to_tensor(same)
    assert tensor.shape == (3, 96, 96) and str(tensor.dtype) == "torch.float32"
    assert float(tensor[1, 5, 7]) == np.asarray(same)[5, 7, 1] / np.float32(255)


def test_wsinfer_model_folder(env, unseen_patches, tmp_path):
    """The folder passes WSInfer's published config schema, and WSInfer's inference steps on it (TorchScript
    loaded to the CPU, the config's transforms applied as it states them, sigmoid of the single logit) give
    Spotter's fp32 probabilities within 1e-4. (`wsinfer run` itself cannot be installed beside the CPU torch:
    PyPI's torchvision is a CUDA build; the transforms are written out above.)"""
    import torch
    from wsinfer_zoo.client import ModelConfiguration

    assert main(["histo", "export", env["run"], "--format", "wsinfer", "--out", tmp_path / "model"]) == 0
    config = ModelConfiguration.from_dict(json.loads((tmp_path / "model" / "config.json").read_text()))
    assert (config.num_classes, list(config.class_names), config.patch_size_pixels) == (1, ["tumor"], 96)
    assert config.spacing_um_px == pytest.approx(0.972)
    assert [t.name for t in config.transform] == ["Resize", "ToTensor"]
    model = torch.jit.load(str(tmp_path / "model" / "model.pt"), map_location="cpu").eval()
    with torch.no_grad():
        logits = model(apply_wsinfer_transforms(config.transform, unseen_patches))
    probs = torch.sigmoid(logits.squeeze(1)).numpy()  # wsinfer/modellib/run_inference.py, one class
    spotter = load_run(env["run"], "cpu", precision="fp32").predict_proba(unseen_patches)
    assert np.abs(probs - spotter).max() < 1e-4
    assert spotter.std() > 0.05  # varied predictions, not a constant


@pytest.mark.slow  # the fast set keeps a few slide tests on the same trained run
def test_an_ensemble_scores_slides_and_exports(env, one_tumour, unseen_patches, tmp_path):
    """An ensemble (here the run twice: its members agree, so it is the run calibrated) through slide and export."""
    import torch

    from spotter import ensemble
    from spotter.histo import export, task

    ens = tmp_path / "ens"
    task.build_ensemble([env["run"], env["run"]], ens, device="cpu")
    (a, b), _ = json.loads((ens / "ensemble.json").read_text())["calibration"]
    single = slide.slide(env["run"], one_tumour[0], tmp_path / "one", stride=96, device="cpu", workers=0)
    both = slide.slide(ens, one_tumour[0], tmp_path / "two", stride=96, device="cpu", workers=0)
    assert both["ensemble"] and not single["ensemble"]
    h1 = np.load(tmp_path / "one" / "heatmap.npy").astype(np.float64)
    h2 = np.load(tmp_path / "two" / "heatmap.npy").astype(np.float64)
    on = ~np.isnan(h1)
    np.testing.assert_allclose(h2[on], ensemble.combine([h1[on]], [(a, b)]), atol=0.01)

    path = export.export(ens, "torchscript", tmp_path / "ens.pt")
    logits = torch.jit.load(str(path))(as_tensor_input(unseen_patches)).detach().numpy()[:, 0]
    expected = load_run(ens, "cpu", precision="fp32").predict_proba(unseen_patches)
    assert np.abs(1 / (1 + np.exp(-logits.astype(np.float64))) - expected).max() < 1e-5


def test_ome_tiff_and_png_read_exactly(tmp_path):
    """OME-TIFF (µm/px in its OME-XML) and PNG (which never says: --mpp) give the written pixels back;
    regions past the edge are white, and thumbnails are block means."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    ome = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(ome, bigtiff=True, ome=True) as tif:
        options = dict(photometric="rgb", tile=(256, 256), compression="deflate")
        tif.write(image, subifds=1, metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **options)
        tif.write(wsi._reduce(image, 2), subfiletype=1, **options)  # 2x2 block means
    png = tmp_path / "slide.png"
    Image.fromarray(image).save(png)
    with pytest.raises(wsi.SlideError, match="pass --mpp"):
        wsi.open_slide(png)
    for source in (wsi.open_slide(ome), wsi.open_slide(png, mpp=0.25)):
        assert source.mpp == pytest.approx(0.25) and source.dimensions[0] == (900, 700)
        np.testing.assert_array_equal(source.read(0, 100, 50, 300, 200), image[50:250, 100:400])
        edge = source.read(0, 850, 650, 100, 100)
        np.testing.assert_array_equal(edge[:50, :50], image[650:, 850:])
        assert (edge[50:] == 255).all() and (edge[:, 50:] == 255).all()
        thumb, scale = source.thumbnail(300)
        k = round(scale)
        np.testing.assert_allclose(thumb[3, 4], image[3 * k:4 * k, 4 * k:5 * k].reshape(-1, 3).mean(0), atol=1.01)
    assert wsi.open_slide(ome).dimensions[1] == (450, 350)


@pytest.mark.slow  # the fast set keeps a few slide tests on the same trained run
def test_tta_averages_the_eight_views_of_each_patch(env, one_tumour, tmp_path):
    path, _ = one_tumour
    summary = slide.slide(env["run"], path, tmp_path / "out", stride=96, tta=True, device="cpu",
                          predictor=env["predictor"], workers=0)
    assert summary["tta"]
    heat = np.load(tmp_path / "out" / "heatmap.npy").astype(np.float64)
    level1 = tifffile.imread(path, level=1)
    m = MARGIN // P
    cells = [(i, j) for i in range(m, m + 6) for j in range(m, m + 6) if not np.isnan(heat[i, j])]
    patches = np.stack([level1[i * P:(i + 1) * P, j * P:(j + 1) * P] for i, j in cells])
    with_tta = env["predictor"].predict_proba(patches, tta=True)
    without = env["predictor"].predict_proba(patches)
    got = np.array([heat[i, j] for i, j in cells])
    assert np.abs(got - with_tta).max() < 0.01
    assert np.abs(with_tta - without).max() > 0.02  # the views do differ, so the check above means something


@pytest.mark.parametrize("workers", [0, 1])
def test_slide_json_splits_read_and_infer_time_by_stage(env, one_tumour, tmp_path, workers):
    """The main process's stages (copy, infer, waiting) make up its read + infer time; reading in this process
    (workers 0) counts as decode and resample instead of waiting."""
    path, _ = one_tumour
    summary = slide.slide(env["run"], path, tmp_path / "out", stride=96, level=0, device="cpu",
                          predictor=env["predictor"], workers=workers)
    stages = json.loads((tmp_path / "out" / "slide.json").read_text())["stages"]
    assert set(stages) == {"decode", "resample", "copy", "infer", "waiting"} and summary["workers"] == workers
    assert all(seconds >= 0 for seconds in stages.values())
    assert stages["decode"] > 0 and stages["resample"] > 0 and stages["infer"] > 0  # level 0 is shrunk 2x
    main_process = stages["copy"] + stages["infer"] + stages["waiting"]
    if not workers:
        main_process += stages["decode"] + stages["resample"]
    assert main_process == pytest.approx(summary["read_and_infer_seconds"], rel=0.15, abs=0.05)
