import numpy as np
import pytest
import tifffile
from PIL import Image

from spotter.histo.tiff import BadImage, read_patch

from conftest import HISTO, require


def real_paths(n=50):
    require(HISTO)
    return sorted((HISTO / "train").glob("*.tif"))[:n]


def test_fast_path_matches_tifffile_and_pillow_on_real_patches():
    for path in real_paths():
        pixels = read_patch(path)
        assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, tifffile.imread(path))
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(path)))


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate"])
def test_other_tiff_encodings_decode_the_same(tmp_path, compression):
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    path = tmp_path / "x.tif"
    Image.fromarray(pixels).save(path, format="TIFF", compression=compression)
    np.testing.assert_array_equal(read_patch(path), pixels)


def test_big_endian_tiff(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "be.tif", pixels, byteorder=">", photometric="rgb")
    np.testing.assert_array_equal(read_patch(tmp_path / "be.tif"), pixels)


def test_truncated_file_is_a_clear_error(tmp_path):
    data = real_paths(1)[0].read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated.tif.*(truncated|corrupt)"):
        read_patch(bad)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(BadImage, match="empty.tif: empty file"):
        read_patch(tmp_path / "empty.tif")


def test_garbage_file(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"not an image at all" * 100)
    with pytest.raises(BadImage, match="junk.tif: not a readable image"):
        read_patch(tmp_path / "junk.tif")


@pytest.mark.parametrize("shape,mode,message", [
    ((96, 96), "L", "mode is L"),
    ((96, 96, 4), "RGBA", "mode is RGBA"),
    ((64, 64, 3), "RGB", "64x64 with 3 channels"),
])
def test_wrong_mode_or_size(tmp_path, shape, mode, message):
    Image.fromarray(np.zeros(shape, np.uint8), mode).save(tmp_path / "odd.tif", format="TIFF")
    with pytest.raises(BadImage, match=message):
        read_patch(tmp_path / "odd.tif")


def test_16_bit_image(tmp_path):
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((96, 96, 3), np.uint16), photometric="rgb")
    with pytest.raises(BadImage, match="deep.tif"):
        read_patch(tmp_path / "deep.tif")


from hypothesis import HealthCheck, example, given, settings, strategies as st


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 27_935), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6))
@example(cut=200, flips=[(38, 0)])  # found by this test: a height tag whose count is 0 crashed the fast path
def test_damaged_real_files_give_a_patch_or_a_clear_error(tmp_path, cut, flips):
    """Truncate a real patch anywhere and corrupt header bytes: never a crash, never a wrong shape."""
    data = bytearray(real_paths(1)[0].read_bytes()[:cut])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    path = tmp_path / "damaged.tif"
    path.write_bytes(bytes(data))
    try:
        pixels = read_patch(path)
    except BadImage as err:
        assert "damaged.tif" in str(err)
    else:
        assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """A small compressed file that would decode to 4000x4000 pixels is refused before any decoding."""
    tifffile.imwrite(tmp_path / "bomb.tif", np.zeros((4000, 4000, 3), np.uint8), photometric="rgb",
                     compression="zlib")
    assert (tmp_path / "bomb.tif").stat().st_size < 200_000

    def no_decoding(self):
        raise AssertionError("decoded a 4000x4000 image")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(BadImage, match="4000x4000 with 3 channels, expected 96x96 RGB; not decoded"):
        read_patch(tmp_path / "bomb.tif")


def test_oversized_files_are_not_read(tmp_path):
    from spotter.histo.tiff import MAX_FILE_BYTES
    (tmp_path / "huge.tif").write_bytes(b"II*\x00" + bytes(MAX_FILE_BYTES))
    with pytest.raises(BadImage, match="huge.tif: file is over 1 MB"):
        read_patch(tmp_path / "huge.tif")
