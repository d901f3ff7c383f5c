"""The tissue mask errs towards tissue: on mosaics of the shared labelled patches `histo slide` scores every
tumour patch, at strides 96 and 32, whatever the layout. The patches it leaves out are saved as a PNG strip
under test-artefacts/tissue/ ($SPOTTER_ARTEFACTS moves it): red bar tumour, blue bar normal."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from conftest import HISTO, require
from spotter import mosaic
from spotter.histo import slide, tissue, wsi

ARTEFACTS = Path(os.environ.get("SPOTTER_ARTEFACTS", Path(__file__).resolve().parents[1] / "test-artefacts")) / "tissue"
WHITE = np.full((1, 96, 96, 3), 255, np.uint8)


@pytest.fixture(scope="module")
def shared():
    """All 6,832 shared labelled patches and their labels."""
    require(HISTO)
    labels = pd.read_csv(HISTO / "train_labels.csv")
    return mosaic.read_patches(HISTO / "train", list(labels["id"])), labels["label"].to_numpy()


def stained(patches: np.ndarray) -> np.ndarray:
    """Fraction of each patch's pixels that are clearly stained."""
    return (tissue.saturation(patches) > 30).mean(axis=(1, 2))


def save_strip(name: str, patches: np.ndarray, labels: np.ndarray) -> Path:
    """The patches in rows of 16, palest first, each over a bar: red tumour, blue normal."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS.parent / ".gitignore").write_text("*\n")
    order = np.argsort(stained(patches)) if len(patches) else []
    cols = 16
    rows = max(1, -(-len(patches) // cols))
    canvas = np.full((rows * 104, cols * 100, 3), 255, np.uint8)
    for k, i in enumerate(order):
        r, c = divmod(k, cols)
        canvas[r * 104:r * 104 + 96, c * 100:c * 100 + 96] = patches[i]
        canvas[r * 104 + 97:r * 104 + 101, c * 100:c * 100 + 96] = (200, 0, 0) if labels[i] else (0, 60, 200)
    picture = Image.fromarray(canvas)
    if not len(patches):
        ImageDraw.Draw(picture).text((8, 40), "no patch left out", fill=(0, 0, 0))
    path = ARTEFACTS / f"{name}.png"
    picture.save(path)
    return path


def scored_in(layout: list[tuple[np.ndarray, int]], patches: np.ndarray, stride: int,
              isolated: bool = False) -> np.ndarray:
    """Which patches `histo slide` scores as themselves, over mosaics given as (patch indices, columns);
    `isolated`: each patch alone on glass, a blank patch's width from its neighbours."""
    scored = np.zeros(len(patches), bool)
    for order, cols in layout:
        if isolated:
            rows = -(-len(order) // cols)
            where = np.full((2 * rows, 2 * cols), -1)
            where[::2, ::2].flat[:len(order)] = order
            placed = np.concatenate([patches, WHITE])[where.ravel()]
            got = mosaic.scored_patches(placed, 2 * cols, stride)
            scored[where.ravel()[where.ravel() >= 0]] = got[where.ravel() >= 0]
        else:
            scored[order] = mosaic.scored_patches(patches[order], cols, stride)
    return scored


def test_what_errs_towards_tissue():
    """Cell-dense tissue that is barely saturated is tissue; tinted glass, black scanner fill and a lone
    speck are not; a fragment the size of one patch is kept."""
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal((228, 222, 236), 2, (1200, 1200, 3)), 0, 255).astype(np.uint8)  # tinted, noisy
    image = glass.copy()
    image[100:400, 100:400] = (100, 100, 108)  # dense grey-blue nuclei: saturation 19 of 255, but dark
    image[600:700, 600:700] = (200, 120, 190)  # a lone patch-sized fragment (100 µm)
    image[900:1100, 100:300] = 0  # scanner fill
    image[1000:1010, 1000:1010] = (150, 60, 140)  # a 10 µm speck of dust
    mask = tissue.tissue_mask(image, 1.0)
    assert mask[110:390, 110:390].all() and mask[610:690, 610:690].all()
    assert not mask[900:1100, 100:300].any() and not mask[995:1015, 995:1015].any()
    assert mask[450:550].mean() == 0 and mask.mean() < 0.08  # the glass is glass (the squares are 7 %)
    assert not tissue.tissue_mask(glass, 1.0).any()


def test_the_palest_tumour_patches_are_all_scored(shared):
    """The 160 least stained tumour patches with 96 random normal ones, in a dense mosaic: every tumour
    patch is scored at strides 96 and 32, and the white margin around the mosaic is not."""
    patches, labels = shared
    tumour = np.flatnonzero(labels == 1)
    palest = tumour[np.argsort(stained(patches[tumour]))[:160]]
    normal = np.random.default_rng(3).choice(np.flatnonzero(labels == 0), 96, replace=False)
    order = np.random.default_rng(4).permutation(np.concatenate([palest, normal]))
    for stride in (96, 32):
        scored = scored_in([(order, 16)], patches, stride)
        save_strip(f"palest_dropped_stride{stride}", patches[order][~scored[order]], labels[order][~scored[order]])
        assert scored[palest].all(), f"stride {stride}: tumour patches left out: {palest[~scored[palest]]}"
    source = wsi.from_array(mosaic.mosaic_image(patches[order], 16, 16, 192), 0.972)
    *_, on = slide.find_tissue(source, slide.make_grid(source, 0.972, 96))
    assert on[2:-2, 2:-2].all() and not on[0].any() and not on[:, 0].any()  # glass beyond one cell: never
    *_, half = slide.find_tissue(source, slide.make_grid(source, 0.972, 96), threshold=0.5)
    *_, everything = slide.find_tissue(source, slide.make_grid(source, 0.972, 96), use_mask=False)
    assert half.sum() <= on.sum() < everything.sum() == everything.size


@pytest.mark.slow  # about 30 s: every shared patch in three layouts
def test_no_tumour_patch_is_left_out_of_any_layout(shared):
    """All 6,832 patches: one dense 83-column mosaic (seed 0) and twelve 24x24 ones (seed 1), at strides 96
    and 32: tumour recall 100 %. Each patch alone on glass (the hardest case, seed 2) at stride 96: the only
    tumour patches left out are ones with no stain at all."""
    patches, labels = shared
    n = len(patches)
    tumour, normal = labels == 1, labels == 0
    chunks = np.random.default_rng(1).permutation(n)
    layouts = {"dense": [(np.random.default_rng(0).permutation(n), 83)],
               "chunks": [(chunks[s:s + 576], 24) for s in range(0, n, 576)]}
    for name, layout in layouts.items():
        for stride in (96, 32):
            scored = scored_in(layout, patches, stride)
            save_strip(f"{name}_dropped_stride{stride}", patches[~scored], labels[~scored])
            print(f"{name} stride {stride}: tumour recall {scored[tumour].mean():.4f}, "
                  f"normal {scored[normal].mean():.4f}")
            assert scored[tumour].all(), f"{name}, stride {stride}: {np.flatnonzero(tumour & ~scored)}"
            assert scored[normal].mean() > 0.99
    alone = np.random.default_rng(2).permutation(n)
    scored = scored_in([(alone[s:s + 400], 20) for s in range(0, n, 400)], patches, 96, isolated=True)
    save_strip("isolated_dropped_stride96", patches[~scored], labels[~scored])
    print(f"isolated stride 96: tumour recall {scored[tumour].mean():.4f}, normal {scored[normal].mean():.4f}")
    missed = tumour & ~scored
    assert missed.sum() <= 2 and (stained(patches[missed]) < 0.01).all()
    assert scored[normal].mean() > 0.97
