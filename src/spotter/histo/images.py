"""Image files checked before anything decodes them: type from the bytes, pixel count from the header. The
server's uploads and `histo explain`'s folders of patches both come through here.

Patches are 96x96 RGB; a larger image is centre-cropped to its middle 96x96 (the label concerns the centre
32x32; whole slides go to the slides endpoint), a smaller one is refused.
"""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np

PATCH = 96

# Magic bytes of the formats taken; anything else is refused whatever its name or declared type says.
SIGNATURES = {b"II*\x00": "tiff", b"MM\x00*": "tiff", b"II+\x00": "tiff", b"MM\x00+": "tiff",
              b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


class UploadError(ValueError):
    """A refused upload: `status` is the HTTP code (413 too big, 415 wrong type, 422 unusable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """'tiff', 'png', 'jpeg' or None, from the first bytes."""
    for magic, kind in SIGNATURES.items():
        if data.startswith(magic):
            return kind
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read straight from a TIFF's first directory or a PNG's IHDR; None if not found there.
    Used for slides, which are far larger than Pillow's own decompression-bomb limit allows it to open."""
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        order = "<" if data[:2] == b"II" else ">"
        try:
            (ifd,) = struct.unpack_from(order + "I", data, 4)
            (count,) = struct.unpack_from(order + "H", data, ifd)
            size = {}
            for i in range(count):
                tag, typ, _, raw = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * i)
                if tag in (256, 257) and typ in (3, 4):
                    size[tag] = struct.unpack_from(order + ("H" if typ == 3 else "I"), raw)[0]
            return (size[256], size[257]) if len(size) == 2 else None
        except struct.error:
            return None
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def check_slide(data: bytes, name: str, max_pixels: int, max_decoded_pixels: int | None = None) -> str:
    """The slide's type, after checking its bytes and its size (from the header, nothing decoded).
    PNG and JPEG slides are decoded whole, so `max_decoded_pixels` caps them (tiled TIFFs are read in blocks)."""
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, f"{name}: not a TIFF, PNG or JPEG image (judged by its bytes, not its name)")
    width, height = slide_size(data, name, max_pixels)
    if width * height > max_pixels:
        raise UploadError(413, f"{name}: {width}x{height} is {width * height:,} pixels, over this server's "
                               f"cap of {max_pixels:,}")
    if kind != "tiff" and max_decoded_pixels is not None and width * height > max_decoded_pixels:
        raise UploadError(413, f"{name}: {width}x{height} is {width * height:,} pixels; a {kind.upper()} slide is "
                               f"decoded whole, and this server takes at most {max_decoded_pixels:,} pixels of one "
                               "(send a tiled TIFF for larger slides)")
    return kind


def slide_size(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a slide from its header: TIFF and PNG read here, JPEG and BigTIFF by Pillow."""
    return header_size(data) or open_checked(data, name, max_pixels).size


def open_checked(data: bytes, name: str, max_pixels: int):
    """A Pillow image whose header has been read and checked, not yet decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(422, f"{name}: empty file")
    if sniff(data) is None:
        raise UploadError(415, f"{name}: not a TIFF, PNG or JPEG image (judged by its bytes, not its name)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as err:  # Pillow's own, looser cap, also from the header
        raise UploadError(413, f"{name}: {err} Over this server's cap of {max_pixels:,} pixels.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UploadError(422, f"{name}: damaged image header ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(413, f"{name}: {width}x{height} is {width * height:,} pixels, over this server's cap "
                               f"of {max_pixels:,}")
    return image


def decode_patch(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, str | None]:
    """(96 x 96 x 3 uint8 pixels, a note saying what was done to the image, or None)."""
    image = open_checked(data, name, max_pixels)
    width, height = image.size
    if width < PATCH or height < PATCH:
        raise UploadError(422, f"{name}: {width}x{height} is smaller than a 96x96 patch")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            if image.mode not in ("RGB", "RGBA", "P"):
                raise UploadError(422, f"{name}: image mode {image.mode}; expected 8-bit RGB colour")
            rgb = image.convert("RGB")
    except UploadError:
        raise
    except Exception as err:  # Pillow's decoders raise many types on damaged data
        raise UploadError(422, f"{name}: not a readable image ({err})") from None
    pixels = np.asarray(rgb, dtype=np.uint8)
    note = None
    if (width, height) != (PATCH, PATCH):
        top, left = (height - PATCH) // 2, (width - PATCH) // 2
        pixels = pixels[top:top + PATCH, left:left + PATCH]
        note = f"centre 96x96 of a {width}x{height} image"
    if image.mode == "RGBA" or image.info.get("transparency") is not None:
        note = (note + "; " if note else "") + "transparency ignored"
    return np.ascontiguousarray(pixels), note


def encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
