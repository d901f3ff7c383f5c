"""What one request to `spotter serve` may ask for; each limit that is a `serve` option is declared here once."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import setting


@dataclass
class Limits:
    """What one request may ask for; beyond these the answer is 413 or 422."""

    max_upload_mb: float = setting(50.0, help="largest request body accepted, in MB")
    max_patch_pixels: int = 4096 * 4096  # one uploaded patch image (before decoding)
    max_slide_pixels: int = 2_000_000_000  # one slide (its header's size)
    max_files: int = 64  # patches per request
    max_texts: int = 256  # tweets per request
    max_text_chars: int = 2000  # Kaggle's longest tweet, HTML-escaped, is under 400
    max_batch: int = 256  # items per shared forward pass
    max_wait_ms: float = 2.0  # how long a lone request waits for company
    # a large real slide at stride 32 is about 1 M grid cells
    max_slide_tiles: int = setting(2_000_000, help="largest slide job, in tiles at its stride")
    max_image_slide_pixels: int = 100_000_000  # a PNG/JPEG slide, decoded whole (300 MB of RGB)
    max_slide_upsample: float = 4.0  # level 0 enlarged at most this much to the model's µm per pixel
    max_jobs: int = setting(4, help="slide jobs queued or running at once (429 beyond)")
    job_ttl_s: float = setting(3600.0, flag="--job-ttl", metavar="S",
                               help="seconds a finished slide job and its files are kept")

    SHOWN = ("max_upload_mb", "max_files", "max_texts", "max_text_chars", "max_slide_pixels", "max_slide_tiles",
             "max_image_slide_pixels", "max_slide_upsample", "max_jobs", "job_ttl_s")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def shown(self) -> dict:
        """The limits a caller may plan by (/api/models, /api/health)."""
        return {k: getattr(self, k) for k in self.SHOWN}
