"""Image decoding for `dse score`: every Pillow mode read as 8-bit RGB by the documented rules, or refused.

The files are 16 × 16 and read with ``size=16, crop_fraction=1.0``, so resize and crop are the
identity and the returned pixels are exactly the decoded ones.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from dse_ext.images import _decode_rgb, load_image_subset  # noqa: E402

S = 16  # image side = target size: no resampling


def grid(lo: float, hi: float, dtype) -> np.ndarray:
    """S × S values spread over [lo, hi] (row-major ramp)."""
    return np.linspace(lo, hi, S * S).reshape(S, S).astype(dtype)


def rgb_pixels(seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (S, S, 3), generator=g, dtype=torch.uint8).numpy()


def read_folder(folder, num_images=2, **kwargs):
    """load_image_subset on ``folder`` with identity geometry; {file name: (S, S, 3) uint8 array}."""
    images, paths = load_image_subset(folder, num_images, size=S, crop_fraction=1.0, **kwargs)
    return {p.name: images[i].permute(1, 2, 0).numpy() for i, p in enumerate(paths)}


def read_one(tmp_path, name: str, image, expected_mode: str | None = None, **save_kwargs) -> np.ndarray:
    """Saves ``image`` twice under a fresh folder, reads them through load_image_subset, returns one.

    No warning may be raised (a decodable file is neither refused nor warned about by Pillow).
    """
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    stem, ext = name.rsplit(".", 1)
    for copy in ("a", "b"):
        image.save(folder / f"{stem}_{copy}.{ext}", **save_kwargs)
    if expected_mode is not None:  # the file really is in the mode under test
        with Image.open(folder / f"{stem}_a.{ext}") as reopened:
            assert reopened.mode == expected_mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_folder(folder)
    a, b = out[f"{stem}_a.{ext}"], out[f"{stem}_b.{ext}"]
    assert a.dtype == np.uint8 and a.shape == (S, S, 3)
    assert np.array_equal(a, b)
    return a


def grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.uint8)[:, :, None], 3, axis=2)


def round_div_257(values: np.ndarray) -> np.ndarray:
    """Independent reference: Python's round(v / 257) per value (257 is odd: never a tie)."""
    return np.array([[round(int(v) / 257) for v in row] for row in values], dtype=np.uint8)


# ------------------------------------------------------------------ 8-bit modes: Pillow's conversion
def test_rgb_is_read_exactly(tmp_path):
    pixels = rgb_pixels(0)
    assert np.array_equal(read_one(tmp_path, "rgb.png", Image.fromarray(pixels), "RGB"), pixels)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    pixels = rgb_pixels(1)
    alpha = np.zeros((S, S), np.uint8)
    alpha[:, S // 2:] = 255  # half fully transparent: its colours must still come back unchanged
    image = Image.fromarray(np.dstack([pixels, alpha]))
    assert np.array_equal(read_one(tmp_path, "rgba.png", image, "RGBA"), pixels)


def test_grey_and_bilevel(tmp_path):
    grey = grid(0, 255, np.uint8)
    assert np.array_equal(read_one(tmp_path, "l.png", Image.fromarray(grey), "L"), grey3(grey))
    bits = (np.indices((S, S)).sum(0) % 3 == 0)
    bilevel = Image.fromarray(bits).convert("1")
    assert np.array_equal(read_one(tmp_path, "bilevel.png", bilevel, "1"), grey3(bits * 255))
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(grey[::-1].copy())])
    assert np.array_equal(read_one(tmp_path, "la.png", la, "LA"), grey3(grey))


@pytest.mark.parametrize("transparency", [None, 1, bytes([255, 0, 128, 255])])
def test_palette_with_and_without_transparency(tmp_path, transparency):
    palette = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 128], [255, 255, 255]], np.uint8)
    index = (np.indices((S, S)).sum(0) % 4).astype(np.uint8)
    image = Image.new("P", (S, S))
    image.putpalette(palette.flatten().tolist())
    image.putdata(index.flatten().tolist())
    kwargs = {} if transparency is None else {"transparency": transparency}
    got = read_one(tmp_path, "p.png", image, "P", **kwargs)  # also: no Pillow transparency warning
    assert np.array_equal(got, palette[index])


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa", "HSV", "RGBX"])
def test_in_memory_modes_follow_pillow(mode):
    """Modes Pillow cannot save to a file are checked on the decoder directly."""
    pixels = rgb_pixels(2)
    if mode == "PA":
        image = Image.fromarray(pixels).convert("P").convert("PA")
        expected = np.asarray(Image.fromarray(pixels).convert("P").convert("RGB"))
    elif mode == "La":  # premultiplied grey: L 100 at alpha 128 is grey ≈ 199 once un-premultiplied
        image = Image.frombytes("La", (1, 1), bytes([100, 128]))
        expected = np.asarray(image.convert("LA").convert("L").convert("RGB"))
        assert abs(int(expected[0, 0, 0]) - 199) <= 1
    elif mode == "RGBa":
        image = Image.frombytes("RGBa", (1, 1), bytes([100, 50, 25, 128]))
        expected = np.array([[[199, 99, 49]]], np.uint8)  # un-premultiplied, alpha dropped
    elif mode == "HSV":
        image = Image.fromarray(pixels).convert("HSV")
        expected = np.asarray(image.convert("RGB"))
        assert np.abs(expected.astype(int) - pixels).max() <= 6  # HSV round trip in 8 bits
    else:
        image = Image.fromarray(pixels).convert("RGBX")
        expected = pixels
    assert image.mode == mode
    out = _decode_rgb(image)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("name, mode", [("cmyk.tif", "CMYK"), ("cmyk.jpg", "CMYK"), ("ycc.tif", "YCbCr"),
                                        ("lab.tif", "LAB")])
def test_colour_spaces_follow_pillow(tmp_path, name, mode):
    # Mid-range colours (inside every gamut), constant 4 × 4 patches (JPEG blocks stay near flat).
    patches = np.array([[[200, 100, 50], [40, 120, 200]], [[128, 128, 128], [90, 180, 60]]], np.uint8)
    pixels = np.kron(patches, np.ones((S // 2, S // 2, 1), np.uint8))
    source = Image.fromarray(pixels).convert(mode)
    save_kwargs = {"quality": 100} if name.endswith(".jpg") else {}
    got = read_one(tmp_path, name, source, mode, **save_kwargs)
    with Image.open(next((tmp_path / name.replace(".", "_")).iterdir())) as reopened:
        assert np.array_equal(got, np.asarray(reopened.convert("RGB")))  # Pillow's conversion
    assert np.abs(got.astype(int) - pixels).max() <= 6  # and close to the colours saved
    if name == "cmyk.tif":
        assert np.array_equal(got, pixels)  # lossless, and Pillow's CMYK round trip is exact


# ------------------------------------------------------------------ 16-bit, 32-bit int and float grey
def uint16_values() -> np.ndarray:
    v = grid(0, 65535, np.uint16)
    v[0, :6] = [0, 32896, 65535, 257 * 7 + 128, 257 * 7 + 129, 1]  # → 0, 128, 255, 7, 8, 0
    return v


def test_16bit_png_reads_full_range_not_saturated(tmp_path):
    values = uint16_values()
    got = read_one(tmp_path, "deep.png", Image.fromarray(values), "I;16")
    assert np.array_equal(got, grey3(round_div_257(values)))
    assert got[0, :6, 0].tolist() == [0, 128, 255, 7, 8, 0]
    assert (got == 255).mean() < 0.05  # not the ~97 % saturation of a plain convert("RGB")


def test_16bit_big_endian_tiff(tmp_path):
    values = uint16_values()
    image = Image.frombytes("I;16B", (S, S), values.astype(">u2").tobytes())
    got = read_one(tmp_path, "deep_be.tif", image, "I;16B")
    assert np.array_equal(got, grey3(round_div_257(values)))


@pytest.mark.parametrize("mode, dtype", [("I;16L", "<u2"), ("I;16N", "=u2"), ("I;16", "<u2")])
def test_16bit_byte_orders_in_memory(mode, dtype):
    values = uint16_values()
    image = Image.frombytes(mode, (S, S), values.astype(dtype).tobytes())
    assert image.mode == mode
    assert np.array_equal(np.asarray(_decode_rgb(image)), grey3(round_div_257(values)))


def test_int32_within_16_bits_reads_as_16_bit(tmp_path):
    values = uint16_values().astype(np.int32)
    got = read_one(tmp_path, "int.tif", Image.fromarray(values), "I")
    assert np.array_equal(got, grey3(round_div_257(values)))


def test_float_in_unit_range(tmp_path):
    values = grid(0.0, 1.0, np.float32)
    values[0, :4] = [0.0, 0.5, 1.0, 0.25]  # → 0, 128 (not black), 255, 64
    got = read_one(tmp_path, "float.tif", Image.fromarray(values), "F")
    expected = np.array([[int(float(v) * 255 + 0.5) for v in row] for row in values], np.uint8)
    assert np.array_equal(got, grey3(expected))
    assert got[0, :4, 0].tolist() == [0, 128, 255, 64]


# ------------------------------------------------------------------ refusals
def refused_images(folder) -> dict[str, str]:
    """Writes the refused files; {file name: text its warning must contain}."""
    neg = grid(0, 1000, np.int32)
    neg[3, 3] = -5
    Image.fromarray(neg).save(folder / "negative_int.tif")
    big = grid(0, 70000, np.int32)
    Image.fromarray(big).save(folder / "big_int.tif")
    two = grid(0.0, 2.0, np.float32)
    Image.fromarray(two).save(folder / "float_two.tif")
    nan = grid(0.0, 1.0, np.float32)
    nan[5, 5] = np.nan
    Image.fromarray(nan).save(folder / "float_nan.tif")
    return {"negative_int.tif": "[-5, 1000]", "big_int.tif": "[0, 70000]",
            "float_two.tif": "[0, 2]", "float_nan.tif": "NaN"}


def test_refused_files_are_warned_about_and_replaced_deterministically(tmp_path):
    refused = refused_images(tmp_path)
    good = {}
    for i in range(5):
        good[f"good{i}.png"] = rgb_pixels(10 + i)
        Image.fromarray(good[f"good{i}.png"]).save(tmp_path / f"good{i}.png")
    with pytest.warns(UserWarning) as caught:
        first = read_folder(tmp_path, 6, seed=1)  # more than the 5 good files: every file is tried
    assert sorted(first) == sorted(good)
    for name, pixels in good.items():
        assert np.array_equal(first[name], pixels)
    messages = [str(w.message) for w in caught]
    assert any("only 5 readable" in m for m in messages)
    for name, detail in refused.items():
        message = next(m for m in messages if name in m)
        assert "refused" in message and detail in message, message
        mode = "mode I " if "int" in name else "mode F "
        assert mode in message, message
    # Same folder and seed: same images in the same order; another seed: another order.
    with pytest.warns(UserWarning):
        again, paths = load_image_subset(tmp_path, 3, seed=1, size=S, crop_fraction=1.0)
    with pytest.warns(UserWarning):
        again2, paths2 = load_image_subset(tmp_path, 3, seed=1, size=S, crop_fraction=1.0)
    assert paths == paths2 and torch.equal(again, again2)


def test_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match=r"mode 'XYZ;42' has no faithful mapping"):
        _decode_rgb(types.SimpleNamespace(mode="XYZ;42", info={}))


def test_mostly_refused_folder_raises(tmp_path):
    refused = refused_images(tmp_path)
    for i in range(2):
        Image.fromarray(rgb_pixels(20 + i)).save(tmp_path / f"good{i}.png")
    # At most 2 usable files for 4 asked: every file is tried, 4 of 6 are refused.
    with pytest.warns(UserWarning), pytest.raises(ValueError) as info:
        read_folder(tmp_path, 4)
    message = str(info.value)
    assert "4 of the 6 image files tried were refused or unreadable" in message
    assert "more than half" in message
    assert sum(name in message for name in refused) == 3  # the first three problems are listed
    assert "and 1 more" in message


def test_mostly_refused_folder_stops_early(tmp_path):
    """10 refused files and 1 good one, 2 asked: the 3rd refusal already decides; the rest are not read."""
    for i in range(10):
        Image.fromarray(grid(-1.0, 1.0, np.float32)).save(tmp_path / f"signed{i:02d}.tif")
    Image.fromarray(rgb_pixels(30)).save(tmp_path / "good.png")
    for seed in (0, 1, 2):
        with pytest.warns(UserWarning) as caught, pytest.raises(ValueError, match="more than half"):
            read_folder(tmp_path, 2, seed=seed)
        assert sum("refused" in str(w.message) for w in caught) == 3


def test_half_refused_is_still_read(tmp_path):
    """Exactly half bad is tolerated (the rule is *more* than half)."""
    Image.fromarray(grid(0.0, 3.0, np.float32)).save(tmp_path / "a_bad.tif")
    (tmp_path / "b_broken.png").write_bytes(b"not an image")
    Image.fromarray(rgb_pixels(40)).save(tmp_path / "c_good.png")
    Image.fromarray(rgb_pixels(41)).save(tmp_path / "d_good.png")
    with pytest.warns(UserWarning) as caught:
        out = read_folder(tmp_path, 3)
    assert sorted(out) == ["c_good.png", "d_good.png"]
    messages = " | ".join(str(w.message) for w in caught)
    assert "b_broken.png" in messages and "unreadable" in messages and "only 2 readable" in messages
