"""`spotter demo`'s slide: a pyramidal TIFF at half the patches' µm/px whose drawn patches sit on the stride-96
grid of `histo slide`, so each heatmap cell is one patch (the whole demo trains models: too slow for a test)."""
from __future__ import annotations

import numpy as np

from spotter import demo
from spotter.histo import wsi
from spotter.histo.tiff import PATCH_SIZE


def test_demo_slide_is_a_pyramid_of_whole_patches_on_glass(tmp_path):
    rows, cols = 6, 8
    path = demo.make_demo_slide(tmp_path / "slide.tif", rows=rows, cols=cols)
    slide = wsi.open_slide(path)
    try:
        assert slide.mpp_source == "metadata" and abs(slide.mpp - 0.972 / 2) < 1e-6
        assert slide.dimensions[0] == ((cols + 2) * PATCH_SIZE * 2, (rows + 2) * PATCH_SIZE * 2)
        level = next(lv for lv in range(len(slide.dimensions)) if abs(slide.level_mpp(lv) - 0.972) < 1e-6)
        pixels = slide.read(level, 0, 0, *slide.dimensions[level])
    finally:
        slide.close()
    cells = pixels.reshape(rows + 2, PATCH_SIZE, cols + 2, PATCH_SIZE, 3).swapaxes(1, 2)
    glass = (cells == wsi.WHITE).all(axis=(2, 3, 4))
    assert glass[0].all() and glass[-1].all() and glass[:, 0].all() and glass[:, -1].all()  # the margin
    tissue = ~glass[1:-1, 1:-1]
    assert 0.4 < tissue.mean() < 0.9 and tissue[rows // 2, cols // 2]  # an oval of tissue in the middle
    # Every cell is either all glass or a whole drawn patch: nothing straddles two cells of the grid.
    partly_white = (cells[1:-1, 1:-1] == wsi.WHITE).all(axis=4).mean(axis=(2, 3))
    assert np.all((partly_white == 1) | (partly_white < 0.05))
