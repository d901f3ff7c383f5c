"""What every report shares: the Report it returns and the choice of the mistakes it shows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .html import Page, write_report


@dataclass
class Report:
    numbers: dict
    pictures: dict[str, bytes]  # file name -> PNG bytes
    page: Page

    def write(self, out_dir: Path) -> Path:
        return write_report(out_dir, self.page, self.pictures, self.numbers)


def confident_mistakes(ids: np.ndarray, labels: np.ndarray, probs: np.ndarray, threshold: float,
                       top: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the `top` most confident false positives (highest probability first) and false
    negatives (lowest first); ties broken by id so the lists are reproducible."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, np.float64)
    called = probs >= threshold
    fp = np.flatnonzero(called & (labels == 0))
    fn = np.flatnonzero(~called & (labels == 1))
    fp = fp[np.lexsort((ids[fp], -probs[fp]))][:top]
    fn = fn[np.lexsort((ids[fn], probs[fn]))][:top]
    return fp, fn
