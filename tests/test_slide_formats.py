"""Slides as scanners write them, read through `histo slide`: an Aperio SVS (JPEG tiles, YCbCr or Aperio's
RGB-coded JPEG, `MPP = 0.2520` in its description, 4x and 16x reduced levels), an OME-TIFF with physical
sizes in nm, and a JPEG-compressed generic pyramid. All hold the same level-0 pixels as a deflate pyramid (a
mosaic of real unseen patches resampled to 0.252 µm/px, a 40x scan: no level is at the model's 0.972, so
every read is resampled), and their tiles must equal the deflate slide's within JPEG's loss. A transposed,
colour-garbled or wrong-level reading must fail the same comparison. Non-square pixels and a missing µm/px
stop with a clear error."""
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from conftest import HISTO, histo_slice
from spotter import mosaic
from spotter.cli import main

MPP = 0.2520  # a 40x Aperio scan
LEVELS = (1, 4, 16)  # Aperio's reduced levels
TILE = 256
APERIO = "Aperio Image Library v12.0.15 \r\n"
# Measured on these slides with the seed run (see docs/slides.md): JPEG at quality 90 moves a tile's
# probability by at most about 0.02; a wrong reader moves most tiles by far more.
CLOSE = 0.05  # |Δp| of a tile that agrees
AGREE = 0.95  # the fraction of tiles that must agree


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A seed CNN trained briefly on 1,000 real patches, and a mosaic of 64 real patches it never saw."""
    root = tmp_path_factory.mktemp("formats")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPOTTER_CACHE", str(root / "cache"))
        data = histo_slice(root / "data", 1000, seed=11)
        run = root / "run"
        assert main(["histo", "train", "--data", data, "--out", run, "--model", "seed", "--epochs", "6",
                     "--crop", "96", "--batch-size", "32", "--device", "cpu"]) == 0
    labels = pd.read_csv(HISTO / "train_labels.csv")
    unseen = labels[~labels["id"].isin(pd.read_csv(data / "train_labels.csv")["id"])]
    picked = pd.concat([g.sample(32, random_state=12) for _, g in unseen.groupby("label")]).sample(frac=1, random_state=13)
    image = mosaic.mosaic_image(mosaic.read_patches(HISTO / "train", list(picked["id"])), 8, 8, 192)
    side = round(image.shape[0] * 0.972 / MPP)  # the mosaic at 40x: 4443 px a side
    level0 = np.asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS))
    return {"root": root, "run": run, "level0": level0}


def levels(level0: np.ndarray):
    for factor in LEVELS:
        yield factor, level0 if factor == 1 else np.asarray(Image.fromarray(level0).reduce(factor))


def write_generic(path, level0, *, compression="deflate", mpp=(MPP, MPP)):
    """A tiled pyramid with sub-IFDs, µm/px in the resolution tags (none when `mpp` is None)."""
    options = dict(photometric="rgb", tile=(TILE, TILE), compression=compression, metadata=None)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for factor, pixels in levels(level0):
            if factor == 1:
                resolution = dict(resolution=(1e4 / mpp[0], 1e4 / mpp[1]), resolutionunit="CENTIMETER") if mpp \
                    else dict(resolutionunit="NONE")
                tif.write(pixels, subifds=len(LEVELS) - 1, **resolution, **options)
            else:
                tif.write(pixels, subfiletype=1, **options)
    return path


def write_svs(path, level0, *, ycbcr=True):
    """Aperio's layout: level 0, a stripped thumbnail, the reduced levels, each a page of its own, all
    JPEG; the description in Aperio's format with `MPP = 0.2520`. `ycbcr`: YCbCr tiles with 2x2 chroma
    subsampling (PhotometricInterpretation 6); else Aperio's classic RGB-coded JPEG (photometric RGB)."""
    h, w = level0.shape[:2]
    jpeg = dict(compression="jpeg", compressionargs={"level": 90} if ycbcr else {"level": 90, "outcolorspace": "RGB"},
                subsampling=(2, 2) if ycbcr else (1, 1), photometric="rgb", metadata=None)
    header = (f"{APERIO}{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q=90|AppMag = 40|StripeWidth = 2040|"
              f"ScanScope ID = SS1234|Filename = mosaic|Date = 01/02/24|Time = 10:11:12|Time Zone = GMT+00:00|"
              f"User = 00000000-0000-0000-0000-000000000000|MPP = {MPP:.4f}|Left = 25.691574|Top = 23.449873|"
              f"LineCameraSkew = -0.000424|LineAreaXOffset = 0.019265|LineAreaYOffset = -0.000313|"
              f"Focus Offset = 0.000000|ImageID = 1004486|OriginalWidth = {w}|OriginalHeight = {h}")
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, description=header, tile=(TILE, TILE), **jpeg)
        thumb = np.asarray(Image.fromarray(level0).reduce(32))
        tif.write(thumb, description=f"{APERIO}{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - ", rowsperstrip=16, **jpeg)
        for factor, pixels in list(levels(level0))[1:]:
            tif.write(pixels, description=f"{APERIO}{w}x{h} -> {pixels.shape[1]}x{pixels.shape[0]} JPEG/RGB Q=90",
                      tile=(TILE, TILE), **jpeg)
    with tifffile.TiffFile(path) as tif:  # what a reader sees: Aperio's series, its levels, its colour coding
        assert tif.is_svs and len(tif.series[0].levels) == len(LEVELS)
        assert tif.pages[0].photometric == (6 if ycbcr else 2)
    return path


def write_ome(path, level0):
    """An OME-TIFF, JPEG tiles, physical sizes in nm (OME's unit attribute), reduced levels as sub-IFDs."""
    size = dict(PhysicalSizeX=MPP * 1000, PhysicalSizeXUnit="nm", PhysicalSizeY=MPP * 1000, PhysicalSizeYUnit="nm")
    options = dict(photometric="rgb", tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90})
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for factor, pixels in levels(level0):
            if factor == 1:
                tif.write(pixels, subifds=len(LEVELS) - 1, metadata={"axes": "YXS", **size}, **options)
            else:
                tif.write(pixels, subfiletype=1, **options)
    return path


def score(seed, path, name, *extra) -> pd.DataFrame:
    out = seed["root"] / "out" / name
    assert main(["histo", "slide", seed["run"], "--image", path, "--out", out, "--stride", "96", "--device", "cpu",
                 "--workers", "0", *extra]) == 0
    summary = json.loads((out / "slide.json").read_text())
    assert summary["level"] == 0 and summary["mpp"] == pytest.approx(MPP)  # 0.252 -> 0.972: level 0, resampled
    return pd.read_csv(out / "tiles.csv").set_index(["minx", "miny"])["prob_tumor"]


def agreement(reference: pd.Series, tiles: pd.Series) -> tuple[float, float, float]:
    """(share of the reference's tiles scored here too, share of those within CLOSE, max |Δp|)."""
    both = reference.index.intersection(tiles.index)
    delta = (tiles[both] - reference[both]).abs()
    return len(both) / len(reference), float((delta < CLOSE).mean()) if len(both) else 0.0, float(delta.max())


@pytest.fixture(scope="module")
def reference(seed):
    tiles = score(seed, write_generic(seed["root"] / "deflate.tif", seed["level0"]), "deflate")
    print(f"deflate: {len(tiles)} tiles, probabilities {tiles.min():.3f} to {tiles.max():.3f} (sd {tiles.std():.3f})")
    assert len(tiles) >= 64 and tiles.std() > 0.1  # every patch scored, and varied: a comparison means something
    return tiles


@pytest.mark.parametrize("fmt", ["svs-ycbcr", "svs-aperio-rgb", "ome-nm", "generic-jpeg"])
def test_scanner_formats_score_like_the_deflate_slide(seed, reference, fmt):
    root, level0 = seed["root"], seed["level0"]
    path = {"svs-ycbcr": lambda: write_svs(root / "ycbcr.svs", level0),
            "svs-aperio-rgb": lambda: write_svs(root / "aperio.svs", level0, ycbcr=False),
            "ome-nm": lambda: write_ome(root / "slide.ome.tif", level0),
            "generic-jpeg": lambda: write_generic(root / "jpeg.tif", level0, compression="jpeg")}[fmt]()
    scored, close, worst = agreement(reference, score(seed, path, fmt))
    print(f"{fmt}: {scored:.3f} of the deflate slide's tiles scored, {close:.3f} within {CLOSE}, max |Δp| {worst:.4f}")
    assert scored >= AGREE and close >= AGREE


def test_a_wrong_reader_fails_the_comparison(seed, reference):
    """What a reader that transposed the slide, decoded YCbCr as RGB, or took the 4x level for level 0
    would have read, as deflate slides: each fails the test the formats pass."""
    root, level0 = seed["root"], seed["level0"]
    ycbcr_as_rgb = np.asarray(Image.fromarray(level0).convert("YCbCr"))
    wrong = {"transposed": write_generic(root / "transposed.tif", level0.transpose(1, 0, 2).copy()),
             "ycbcr-as-rgb": write_generic(root / "ycbcr_as_rgb.tif", ycbcr_as_rgb),
             "wrong-level": write_generic(root / "wrong_level.tif", np.asarray(Image.fromarray(level0).reduce(4)))}
    for name, path in wrong.items():
        out = seed["root"] / "out" / name
        assert main(["histo", "slide", seed["run"], "--image", path, "--out", out, "--stride", "96",
                     "--device", "cpu", "--workers", "0"]) in (0, 2)  # the wrong level may hold no whole patch
        tiles = (pd.read_csv(out / "tiles.csv").set_index(["minx", "miny"])["prob_tumor"]
                 if (out / "slide.json").exists() else pd.Series(dtype=float))
        scored, close, worst = agreement(reference, tiles)
        print(f"{name}: {scored:.3f} scored, {close:.3f} within {CLOSE}, max |Δp| {worst:.4f}")
        assert scored < AGREE or close < AGREE, name


def test_non_square_pixels_are_a_clear_error(seed, tmp_path, capsys):
    path = write_generic(tmp_path / "aniso.tif", seed["level0"][:1200, :1200], mpp=(MPP, 0.3))
    assert main(["histo", "slide", seed["run"], "--image", path, "--out", tmp_path / "out", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "aniso.tif" in error and "not square" in error and "0.252" in error and "0.3" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "out" / "slide.json").exists()


def test_missing_mpp_is_a_clear_error_and_mpp_fixes_it(seed, reference, tmp_path, capsys):
    path = write_generic(tmp_path / "nompp.tif", seed["level0"], compression="jpeg", mpp=None)
    assert main(["histo", "slide", seed["run"], "--image", path, "--out", tmp_path / "out", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "nompp.tif" in error and "--mpp" in error and len(error.splitlines()) == 1
    scored, close, _ = agreement(reference, score(seed, path, "nompp", "--mpp", str(MPP)))
    assert scored >= AGREE and close >= AGREE


def test_tissue_options(seed, reference, tmp_path, capsys):
    """--no-tissue-mask scores every cell, glass included; a --tissue-threshold outside 0..1 is refused."""
    path = seed["root"] / "deflate.tif"
    everything = score(seed, path, "nomask", "--no-tissue-mask")
    assert len(everything) == 12 * 12 > len(reference)  # 8x8 patches and 2 cells of margin all round
    assert everything[reference.index].sub(reference).abs().max() < 0.01
    assert main(["histo", "slide", seed["run"], "--image", path, "--out", tmp_path / "out", "--device", "cpu",
                 "--tissue-threshold", "2"]) == 2
    assert "--tissue-threshold 2" in capsys.readouterr().err
