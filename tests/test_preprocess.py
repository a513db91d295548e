"""core.preprocess: the hardened image open and the offline object cut-out."""
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from core.preprocess import MAX_PIXELS, ImageInputError, load_input_image, preprocess


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def huge_png_header(w: int, h: int) -> bytes:
    """A valid PNG whose IHDR claims w x h (the pixel data is tiny/absent): a bomb's shape."""
    raw = png_bytes(Image.new("L", (1, 1)))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def object_on_plain(bg=(90, 120, 150), size=(300, 200), noise=3.0, seed=0) -> Image.Image:
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    d.ellipse((110, 40, 200, 170), fill=(220, 40, 30))
    arr = np.asarray(im).astype(np.float32) + np.random.default_rng(seed).normal(0, noise, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- open

@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr", "PA"])
def test_every_mode_becomes_rgb_or_rgba(mode):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode == "PA":
        im = base.convert("P").convert("PA")
    elif mode in ("I;16", "I", "F"):
        im = Image.fromarray((rng.random((20, 30)) * 60000).astype(np.uint16 if mode == "I;16" else np.float32))
        im = im if mode != "I" else im.convert("I")
    else:
        im = base.convert(mode)
    out = load_input_image(im)
    assert out.mode in ("RGB", "RGBA") and out.size == (30, 20)
    assert out.mode == "RGBA" if mode in ("RGBA", "LA", "PA") else out.mode == "RGB"
    if mode in ("I;16", "F"):  # high-bit-depth data is rescaled, not clipped to white
        assert 0 < np.asarray(out).mean() < 255


def test_p_with_transparency_keeps_alpha():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.info["transparency"] = 0
    out = load_input_image(png_bytes(im))
    assert out.mode == "RGBA" and np.asarray(out)[..., 3].max() == 0


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_input_image(png_bytes(im, format="JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(load_input_image(buf.getvalue()).convert("RGB")).astype(int)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_one_pixel_and_paths(tmp_path):
    p = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (5, 6, 7)).save(p)
    assert load_input_image(p).size == (1, 1)
    assert load_input_image(str(p)).size == (1, 1)
    res = preprocess(load_input_image(p), size=32)  # a uniform image: no cut-out, no crash
    assert res.image.size == (32, 32) and not res.background_removed


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"hello, this is not an image at all", "not an image"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj", "not an image"),
])
def test_non_images_are_clear_errors(data, words):
    with pytest.raises(ImageInputError, match=words):
        load_input_image(data)


def test_truncated_files():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = png_bytes(im, format=fmt)
        with pytest.raises(ImageInputError):
            load_input_image(data[: len(data) // 2])


def test_decompression_bomb_refused_before_decoding():
    data = huge_png_header(20000, 20000)
    with pytest.raises(ImageInputError, match="too large"):
        load_input_image(data)
    assert 20000 * 20000 > MAX_PIXELS


def test_decompression_bomb_message_cites_the_apps_limit():
    """A header PIL itself calls a bomb (> 179 MP) is refused with the app's 40 MP limit, not PIL's."""
    with pytest.raises(ImageInputError, match=f"limit is {MAX_PIXELS / 1e6:.0f} MP") as e:
        load_input_image(huge_png_header(20000, 20000))
    assert "178956970" not in str(e.value)


@pytest.mark.parametrize("w, h", [(40000, 1), (8000, 1), (1, 5000)])
def test_long_thin_images_are_refused_before_any_canvas(w, h, tmp_path):
    Image.new("RGB", (w, h), (200, 30, 30)).save(tmp_path / "thin.png")
    with pytest.raises(ImageInputError, match="longer than wide"):
        preprocess(tmp_path / "thin.png")


@pytest.mark.parametrize("w, h, ratio", [(6000, 300, 0.85), (3000, 3000, 0.3)])
def test_memory_is_bounded_by_the_output_not_the_input(w, h, ratio):
    """The largest accepted shapes: a 20:1 strip, and a large photo with a small object at the smallest
    foreground ratio (both built a canvas of the longest side / ratio squared before: ~0.6 and ~1.2 GB)."""
    import tracemalloc
    im = Image.new("RGB", (w, h), (255, 255, 255))
    k = min(w, h) // 8
    ImageDraw.Draw(im).rectangle((w // 2 - k, h // 2 - k, w // 2 + k, h // 2 + k), fill=(20, 120, 200))
    tracemalloc.start()
    try:
        res = preprocess(im, foreground_ratio=ratio, size=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.image.size == (256, 256) and res.background_removed
    assert peak < 300 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MB"
    x0, y0, x1, y1 = res.bbox    # the box is in the input's pixels, even when the work was downscaled
    assert abs(x0 - (w // 2 - k)) <= 3 and abs(x1 - (w // 2 + k + 1)) <= 3 and abs(y0 - (h // 2 - k)) <= 3


def test_missing_file_and_bad_types(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        load_input_image(tmp_path / "nope.png")
    with pytest.raises(ImageInputError, match="is a folder"):
        load_input_image(tmp_path)
    with pytest.raises(ImageInputError, match="not a regular file"):
        load_input_image("/dev/zero")
    with pytest.raises(ImageInputError):
        load_input_image(12345)
    with pytest.raises(ImageInputError):
        load_input_image(np.zeros((0, 4, 3), np.uint8))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]), st.integers(0, 10**6),
              st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=6))))
def test_fuzz_only_images_or_clear_errors(case):
    """Random bytes and mutated real files: a processed image or an ImageInputError, nothing else."""
    if isinstance(case, tuple):
        fmt, cut, edits = case
        rng = np.random.default_rng(len(edits))
        data = bytearray(png_bytes(Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)), format=fmt))
        for pos, val in edits:
            data[pos % len(data)] = val
        data = bytes(data[: max(1, cut % (len(data) + 1))])
    else:
        data = case
    try:
        res = preprocess(load_input_image(data), size=32)
    except ImageInputError as e:
        assert str(e)
    else:
        assert res.image.mode == "RGB" and res.image.size == (32, 32)


# ----------------------------------------------------------------------------- cut-out

def test_plain_background_cut_out_crops_and_centres():
    res = preprocess(object_on_plain(), remove_background=True, foreground_ratio=0.8, size=128)
    assert res.background_removed
    x0, y0, x1, y1 = res.bbox
    assert abs(x0 - 110) <= 3 and abs(x1 - 201) <= 3 and abs(y0 - 40) <= 3 and abs(y1 - 171) <= 3
    arr = np.asarray(res.image).astype(int)
    assert (arr[:4] >= 250).all() and (arr[:, :4] >= 250).all()     # background now white
    ys, xs = np.nonzero(np.asarray(res.mask) > 127)
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert abs(side / 128 - 0.8) < 0.04                              # foreground ratio honoured
    assert abs((ys.min() + ys.max()) / 2 - 63.5) < 3 and abs((xs.min() + xs.max()) / 2 - 63.5) < 3


def test_foreground_ratio_changes_object_size():
    sizes = []
    for r in (0.5, 0.95):
        m = np.asarray(preprocess(object_on_plain(), foreground_ratio=r, size=100).mask) > 127
        sizes.append(np.ptp(np.nonzero(m.any(axis=1))[0]))
    assert sizes[1] > sizes[0] * 1.6


def test_toggle_off_keeps_background():
    res = preprocess(object_on_plain(), remove_background=False, size=64)
    assert not res.background_removed and res.bbox == (0, 0, 300, 200)


def test_alpha_used_and_transparent_image_refused():
    rgba = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((10, 5, 29, 34), fill=(0, 0, 255, 255))
    res = preprocess(load_input_image(png_bytes(rgba)), size=64)
    assert res.background_removed and res.bbox == (10, 5, 30, 35)
    assert np.asarray(res.image)[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ImageInputError, match="transparent"):
        preprocess(load_input_image(png_bytes(Image.new("RGBA", (30, 30), (255, 0, 0, 0)))))


def test_an_object_cut_by_the_frame_is_used_with_a_note():
    rgba = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((10, 5, 29, 34), fill=(0, 0, 255, 255))
    assert preprocess(rgba, size=64).note == ""                       # inside the frame: no note
    ImageDraw.Draw(rgba).rectangle((30, 20, 49, 30), fill=(0, 0, 255, 255))  # now reaches the right edge
    res = preprocess(rgba, size=64)
    assert res.background_removed and "cut off" in res.note and res.bbox == (10, 5, 50, 35)
    plain = object_on_plain()
    assert "cut off" not in preprocess(plain, size=64).note
    ImageDraw.Draw(plain).rectangle((150, 90, 299, 110), fill=(220, 40, 30))  # a bar from the object to the edge
    res = preprocess(plain, size=64)
    assert res.background_removed and "cut off" in res.note


def test_textured_background_keeps_whole_frame():
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    res = preprocess(im, size=64)
    assert not res.background_removed and res.bbox == (0, 0, 80, 60) and "plain" in res.note


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", 0.1, 2.0, True])
def test_bad_parameters_are_clear(bad):
    with pytest.raises(ImageInputError, match=r"foreground ratio must be a number in \[0.3, 1\]"):
        preprocess(object_on_plain(), foreground_ratio=bad)
