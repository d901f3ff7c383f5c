"""`spotter histo explain`: Grad-CAM overlays for a folder of patches, without the server."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import explain
from .images import UploadError, decode_patch
from .data import DataError
from .predictor import load_run


def explain_folder(run_dir, images, out, *, tta: bool = False, device: str = "auto", batch_size: int = 64,
                   log=print):
    """`spotter histo explain`: `<id>.png` overlays and `explanations.csv` (probability, strongest location
    in logits, share of the map on the labelled centre) for every patch in `images`."""
    images, out = Path(images), Path(out)
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg")) \
        if images.is_dir() else []
    if not paths:
        raise DataError(f"{images}: no .tif, .png or .jpg patches there")
    predictor = load_run(Path(run_dir), device)
    predictor.check_tta(tta)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in tqdm(range(0, len(paths), batch_size), desc="explain", unit="batch", disable=len(paths) <= batch_size):
        chunk = paths[start:start + batch_size]
        try:
            pixels = np.stack([decode_patch(p.read_bytes(), str(p), 10**8)[0] for p in chunk])
        except UploadError as err:
            raise DataError(str(err)) from None
        probs = predictor.predict_proba(pixels, tta)
        cams = predictor.grad_cam(pixels)
        for path, px, cam, p in zip(chunk, pixels, cams, probs):
            (out / f"{path.stem}.png").write_bytes(explain.overlay_png(px, cam, float(p)))
            rows.append({"id": path.stem, "probability": float(p), "max_logit": float(cam.max()),
                         "centre_share": float(cam[32:64, 32:64].sum() / max(cam.sum(), 1e-12))})
    pd.DataFrame(rows).to_csv(out / "explanations.csv", index=False, float_format="%.6f")
    log(f"wrote {len(rows)} Grad-CAM overlays and explanations.csv to {out} (colour: 0 to {explain.CAM_SCALE:g} logits, "
        "faded by probability; the cyan square is the labelled centre 32x32)")
    return rows
