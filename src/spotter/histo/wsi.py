"""Whole-slide images: open a slide, know its µm per pixel, read exact regions and a thumbnail.

Pyramidal TIFF, SVS and OME-TIFF (and any other TIFF) are read through tiffslide, pure Python on top of
tifffile, so no OpenSlide C library is needed; PNG and JPEG through Pillow. Regions are read straight from
the level's zarr array in that level's own pixels, so no level-0 -> level rounding can shift them. Pixels
outside the slide read as white (background), never black (which would look like tissue to nothing but
would skew the stain).

`write_pyramid` writes a tiled pyramidal TIFF tile by tile (tests and the benchmark build slides with it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from ..errors import UserError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg"}
SLIDE_SUFFIXES = {".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf", ".ndpi", *PIL_SUFFIXES}
MPP_RANGE = (0.05, 100.0)  # µm per pixel a real scan can have; outside it the tag is a screen DPI, not a scan
SQUARE = 0.01  # pixels whose width and height differ by less than this (relative) are square: scanners round
WHITE = 255


class SlideError(UserError, ValueError):
    """A slide that cannot be used; the message names the file and what is wrong."""


@dataclass
class Slide:
    """An open slide: level sizes (width, height), their downsamples from level 0, and level 0's µm/px."""

    path: Path
    dimensions: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float
    mpp_source: str  # "metadata" or "--mpp"
    mpp_y: float | None = None  # the file's µm per pixel vertically, when it differs from `mpp`
    _tiff: object = field(default=None, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.downsamples[level]

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of the level's pixels [y, y + height) x [x, x + width); white outside."""
        out = np.full((height, width, 3), WHITE, np.uint8)
        level_w, level_h = self.dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, level_w), min(y + height, level_h)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            pixels = self._level(level)[y0:y1, x0:x1]
        except Exception as err:  # a truncated or corrupt tile surfaces as any decoder's error
            raise SlideError(f"{self.path}: cannot read level {level} at ({x}, {y}): {err}") from None
        out[y0 - y:y1 - y, x0 - x:x1 - x] = _rgb(np.asarray(pixels), self.path)
        return out

    def _level(self, level: int):
        if self._image is not None:
            return self._image
        if level not in self._arrays:
            group = self._tiff.zarr_group
            array = group[str(level)] if hasattr(group, "keys") else group
            axes = self._tiff.properties["tiffslide.series-axes"]
            self._arrays[level] = _Channels(array) if axes == "CYX" else array
        return self._arrays[level]

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A thumbnail of at most `max_side` pixels a side and its downsample from level 0.

        Built from the smallest level that is still larger, by whole-pixel block averages read in strips,
        so memory stays bounded even for a slide that has no small level.
        """
        # the coarsest level still at least max_side wide (or level 0 when the slide is small)
        candidates = [lv for lv, (w, h) in enumerate(self.dimensions) if max(w, h) >= max_side] or [0]
        level = max(candidates, key=lambda lv: self.downsamples[lv])
        width, height = self.dimensions[level]
        factor = max(1, math.ceil(max(width, height) / max_side))
        out_w, out_h = max(1, width // factor), max(1, height // factor)
        rows_per_strip = max(1, (16 << 20) // (width * 3 * factor)) * factor  # about 16 MB a strip
        thumb = np.empty((out_h, out_w, 3), np.uint8)
        for top in range(0, out_h * factor, rows_per_strip):
            rows = min(rows_per_strip, out_h * factor - top)
            strip = self.read(level, 0, top, out_w * factor, rows)
            blocks = strip.reshape(rows // factor, factor, out_w, factor, 3).mean(axis=(1, 3), dtype=np.float32)
            thumb[top // factor:top // factor + rows // factor] = np.round(blocks).astype(np.uint8)
        return thumb, self.downsamples[level] * factor

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()


class _Channels:
    """A CYX array indexed as YXC."""

    def __init__(self, array):
        self.array = array

    def __getitem__(self, key):
        return np.moveaxis(np.asarray(self.array[(slice(None), *key)]), 0, -1)


def _rgb(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        raise SlideError(f"{path}: unsupported image mode ({pixels.dtype}, {channels} channel(s)); "
                         "Spotter reads 8-bit RGB or RGBA slides")
    return pixels[..., :3]


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide; `mpp` (µm per level-0 pixel) overrides the file's own, and is required when it has none."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: no such file")
    if mpp is not None and not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        raise SlideError(f"{path}: --mpp {mpp} is not a scan resolution (expected {MPP_RANGE[0]} to "
                         f"{MPP_RANGE[1]} µm per pixel)")
    if path.suffix.lower() in PIL_SUFFIXES:
        slide = _open_pil(path)
    else:
        slide = _open_tiff(path)
    if mpp is not None:
        slide.mpp, slide.mpp_source, slide.mpp_y = float(mpp), "--mpp", None
    if slide.mpp_y is not None:
        slide.close()
        raise SlideError(f"{path}: its pixels are not square ({slide.mpp:g} µm wide, {slide.mpp_y:g} µm high); "
                         "Spotter reads square pixels only: resample the slide (or pass --mpp if the file's "
                         "values are wrong)")
    if not slide.mpp:
        slide.close()
        raise SlideError(f"{path}: the file does not say how many µm a pixel is; pass --mpp "
                         "(for example --mpp 0.25 for a 40x scan, 0.5 for 20x)")
    return slide


def _open_tiff(path: Path) -> Slide:
    import tiffslide

    try:
        tiff = tiffslide.TiffSlide(path)
        dims = [tuple(map(int, d)) for d in tiff.level_dimensions]
        downsamples = [float(d) for d in tiff.level_downsamples]
        axes = tiff.properties["tiffslide.series-axes"]
    except Exception as err:  # tifffile raises many types for a truncated or foreign file
        raise SlideError(f"{path}: not a readable slide ({type(err).__name__}: {err})") from None
    if axes not in ("YXS", "CYX"):
        tiff.close()
        raise SlideError(f"{path}: unsupported image mode (axes {axes}); Spotter reads RGB slides")
    if min(dims[0]) < 1:
        tiff.close()
        raise SlideError(f"{path}: the image is empty")
    mpp_x, mpp_y = _metadata_mpp(tiff)
    mpp = mpp_x if mpp_x and MPP_RANGE[0] <= mpp_x <= MPP_RANGE[1] else 0.0
    square = not mpp or not mpp_y or abs(mpp_y - mpp) <= SQUARE * mpp
    slide = Slide(path, dims, downsamples, mpp, "metadata", None if square else mpp_y, _tiff=tiff)
    slide.read(0, 0, 0, 1, 1)  # a file whose pixels cannot be decoded fails here, with its name
    return slide


def _metadata_mpp(tiff) -> tuple[float | None, float | None]:
    """µm per level-0 pixel across and down, as the file says: tiffslide reads Aperio's `MPP = ` and the
    TIFF resolution tags; an OME-TIFF's physical sizes are read here, as tiffslide does not."""
    x, y = tiff.properties.get("tiffslide.mpp-x"), tiff.properties.get("tiffslide.mpp-y")
    if not x:
        x, y = _ome_mpp(tiff, "X"), _ome_mpp(tiff, "Y")
    return _finite(x), _finite(y)


def _finite(value) -> float | None:
    value = float(value) if value else None
    return value if value and math.isfinite(value) else None


# OME's units of length (its schema's symbols); the micro sign is written both ways in the wild
_OME_UNITS = {"µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4}


def _ome_mpp(tiff, axis: str) -> float | None:
    """PhysicalSize{axis} of an OME-TIFF's first image, in µm (OME's default unit); NaN for a unit it
    cannot convert (the slide then does not say its µm/px)."""
    import re

    xml = getattr(tiff.ts_tifffile, "ome_metadata", None) or ""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)  # the first image's attributes only
    size = re.search(rf'PhysicalSize{axis}="([^"]+)"', pixels.group(0) if pixels else "")
    if not size:
        return None
    unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', pixels.group(0))
    return float(size.group(1)) * _OME_UNITS.get(unit.group(1) if unit else "µm", float("nan"))


def _open_pil(path: Path) -> Slide:
    Image.MAX_IMAGE_PIXELS = 1 << 30  # a large PNG of a slide is not a decompression bomb
    try:
        with Image.open(path) as image:
            if image.mode not in ("RGB", "RGBA"):
                raise SlideError(f"{path}: unsupported image mode {image.mode}; Spotter reads RGB or RGBA images")
            pixels = np.asarray(image.convert("RGB"))
    except SlideError:
        raise
    except Exception as err:
        raise SlideError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    # PNG and JPEG resolution tags hold screen DPI (72, 96), never a scan's: the user must say.
    return from_array(pixels, 0.0, path)


def from_array(pixels: np.ndarray, mpp: float, path: Path = Path("<memory>")) -> Slide:
    """A one-level slide over an RGB image already in memory, `mpp` µm per pixel."""
    return Slide(path, [(pixels.shape[1], pixels.shape[0])], [1.0], mpp, "metadata", _image=pixels)


def pick_level(slide: Slide, target_mpp: float) -> int:
    """The coarsest level not coarser than `target_mpp` (1 % slack for scanners' rounding); level 0 when
    even that is coarser (it is then upsampled)."""
    fine_enough = [lv for lv in range(len(slide.dimensions)) if slide.level_mpp(lv) <= target_mpp * 1.01]
    return max(fine_enough, key=slide.level_mpp) if fine_enough else 0


def list_slides(pattern: str | Path) -> list[Path]:
    """A slide file, every slide file in a folder, or the files a glob matches (sorted)."""
    path = Path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _is_slide_name(p))
        if not found:
            raise SlideError(f"{path}: no slide files (.tif, .tiff, .svs, .png, .jpg) in this folder")
        return found
    import glob

    found = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
    if not found:
        raise SlideError(f"{pattern}: no such file, folder or matching files")
    return found


def _is_slide_name(path: Path) -> bool:
    return any(path.name.lower().endswith(s) for s in SLIDE_SUFFIXES)


def write_pyramid(path: Path, width: int, height: int, tile_source: Callable[[int, int, int, int, int], np.ndarray],
                  mpp: float, *, levels: int = 3, tile: int = 256, compression: str = "deflate",
                  thumbnail_side: int = 1024, resolution: bool = True) -> None:
    """Write a tiled pyramidal TIFF tile by tile: level 0 at `mpp`, then halvings (at least `levels` levels)
    down to one of at most `thumbnail_side` pixels a side.

    `tile_source(scale, x, y, w, h)` gives the (h, w, 3) uint8 pixels of the level downsampled `scale` times,
    at that level's (x, y); only one tile is in memory at a time. The µm per pixel is stored in the
    resolution tags (pixels per centimetre), where tiffslide and QuPath read it (`resolution=False`: not).
    """
    import tifffile

    scales = [1]
    while len(scales) < levels or max(width, height) / scales[-1] > thumbnail_side:
        scales.append(scales[-1] * 2)

    def tiles(scale: int) -> Iterator[np.ndarray]:
        for y in range(0, -(-height // scale), tile):
            for x in range(0, -(-width // scale), tile):
                yield tile_source(scale, x, y, tile, tile)

    options = dict(photometric="rgb", tile=(tile, tile), compression=compression, dtype=np.uint8,
                   resolutionunit="CENTIMETER" if resolution else "NONE")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, scale in enumerate(scales):
            shape = (-(-height // scale), -(-width // scale), 3)
            per_cm = 1e4 / (mpp * scale) if resolution else 1.0
            extra = dict(subifds=len(scales) - 1) if k == 0 else dict(subfiletype=1)
            tif.write(tiles(scale), shape=shape, resolution=(per_cm, per_cm), **extra, **options)


def array_source(level0: np.ndarray) -> Callable[[int, int, int, int, int], np.ndarray]:
    """A `write_pyramid` tile source over an in-memory level-0 image (white past its edges); each level is
    made by scale x scale block means."""
    def source(scale: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h * scale, w * scale, 3), WHITE, np.uint8)
        part = level0[y * scale:(y + h) * scale, x * scale:(x + w) * scale]
        out[:part.shape[0], :part.shape[1]] = part
        return _reduce(out, scale)
    return source


def _reduce(pixels: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return pixels
    h, w = pixels.shape[0] // scale, pixels.shape[1] // scale
    blocks = pixels[:h * scale, :w * scale].reshape(h, scale, w, scale, 3).mean(axis=(1, 3))
    return np.round(blocks).astype(np.uint8)
