"""The one entry point for user images: a hardened open and an offline object cut-out.

Uploads come from strangers, so ``load_input_image`` is the only place a user's bytes
become pixels: it refuses decompression bombs before decoding, applies EXIF orientation,
takes the first frame of animations, and turns every PIL mode into RGB or RGBA. Any
failure is an ``ImageInputError`` (a ``ValueError``) whose message a UI can show as is.

``preprocess`` then produces what the models expect (DESIGN.md): the object on white,
cropped, centred in a square with a chosen foreground ratio. The mask comes from the
alpha channel when there is one, else from a border-colour flood of a plain background
(no network, no learned matting), cleaned with morphology.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

MAX_PIXELS = 40_000_000          # ~6300x6300; larger inputs are refused before decoding
MAX_BYTES = 30 * 1024 * 1024     # raw upload size accepted by load_input_image
MAX_ASPECT = 20.0                # longest over shortest side; a 40000x1 strip is not a photo of an object
WORK_SIDE = 2048                 # preprocessing works at most at this longest side: memory and time stay bounded
MIN_FOREGROUND = 0.002           # a cut-out smaller than this fraction is "nothing found"
FOREGROUND_RANGE = (0.3, 1.0)    # object side over square side: the one rule for the app and the CLI
CUT_OFF_NOTE = "the object touches the image border, so part of it is cut off: the 3-D shape there is a guess"


class ImageInputError(ValueError):
    """An input image that cannot be used; the message is meant for the user."""


@dataclass
class PreprocessResult:
    image: Image.Image            # RGB, object on white, size x size
    mask: Image.Image             # L, 255 = object, aligned with ``image``
    bbox: tuple[int, int, int, int]  # object box (x0, y0, x1, y1) in the input image
    background_removed: bool      # True when the mask came from alpha or the cut-out
    note: str = ""                # why the cut-out was skipped, if it was


# ----------------------------------------------------------------------------- open

def _open(src: Any) -> Image.Image:
    """Return an opened (not yet decoded) PIL image from a path, bytes, file or array."""
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        if src.size == 0:
            raise ImageInputError("the image is empty (0 pixels)")
        arr = src
        if arr.dtype != np.uint8:
            arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255 if arr.max(initial=0) > 1 else 1)
            arr = (arr * (1 if arr.max(initial=0) > 1 else 255)).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageInputError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {src.shape}")
        return Image.fromarray(arr)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the upload"
    elif isinstance(src, (str, Path)):
        path = Path(src)
        name = path.name or str(path)
        if path.is_dir():
            raise ImageInputError(f"{path}: is a folder, not an image file")
        if path.exists() and not path.is_file():
            raise ImageInputError(f"{path}: is not a regular file (a device, pipe or socket), not an image file")
        if not path.is_file():
            raise ImageInputError(f"{path}: no such file")
        if path.stat().st_size > MAX_BYTES:
            raise ImageInputError(f"{name}: file is larger than {MAX_BYTES // 2**20} MB")
        data = path.read_bytes()
    elif hasattr(src, "read"):
        data, name = src.read(MAX_BYTES + 1), getattr(src, "name", "the upload")
    else:
        raise ImageInputError(f"unsupported image input of type {type(src).__name__}")
    if len(data) == 0:
        raise ImageInputError(f"{name}: the file is empty")
    if len(data) > MAX_BYTES:
        raise ImageInputError(f"{name}: file is larger than {MAX_BYTES // 2**20} MB")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageInputError(f"{name}: not an image file (or a format that cannot be read)") from None
    except Image.DecompressionBombError:
        raise ImageInputError(f"{name}: {_too_large()}") from None
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise ImageInputError(f"{name}: unreadable image ({e})") from None


def _too_large(w: int | None = None, h: int | None = None) -> str:
    size = f"{w}x{h} = {w * h / 1e6:.0f} MP; " if w else ""
    return f"the image is too large ({size}the limit is {MAX_PIXELS / 1e6:.0f} MP)"


def _to_rgb_or_rgba(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, or RGBA when the image carries transparency."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        arr = np.nan_to_num(arr)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def check_aspect(w: int, h: int) -> None:
    """Refuse a strip: its square canvas would be its long side squared, and it is no photo of an object."""
    if max(w, h) / max(min(w, h), 1) > MAX_ASPECT:
        raise ImageInputError(f"the image is {w}x{h} pixels, {max(w, h) / max(min(w, h), 1):.0f} times longer "
                              f"than wide; a photo of an object is at most {MAX_ASPECT:g}:1")


def load_input_image(src: Any) -> Image.Image:
    """Open a user image safely -> PIL RGB or RGBA (decoded, EXIF-upright, first frame).

    Raises ``ImageInputError`` for anything that is not a usable image: non-images,
    truncated files, empty images, more than ``MAX_PIXELS`` pixels (checked from the
    header, before decoding), files over ``MAX_BYTES``.
    """
    im = _open(src)
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageInputError("the image is empty (0 pixels)")
    if w * h > MAX_PIXELS:
        raise ImageInputError(_too_large(w, h))
    check_aspect(w, h)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(im, "is_animated", False):
                im.seek(0)
            im.load()
            try:
                im = ImageOps.exif_transpose(im) or im
            except Exception:  # a malformed EXIF block should not lose the picture
                pass
            out = _to_rgb_or_rgba(im)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(_too_large(w, h)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as e:
        raise ImageInputError(f"the image file is damaged or truncated ({type(e).__name__}: {e})") from None
    if out.size[0] * out.size[1] == 0:
        raise ImageInputError("the image is empty (0 pixels)")
    return out


# ----------------------------------------------------------------------------- cut-out

def _border(arr: np.ndarray) -> np.ndarray:
    return np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)


def _plain_background_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Object mask of an image on a roughly plain background, or None if there is none.

    The background colour is the median of the border; pixels close to it that connect
    to the border are background. The threshold adapts to how noisy the border is.
    """
    h, w, _ = rgb.shape
    if min(h, w) < 3:
        return None
    img = rgb.astype(np.float32)
    border = _border(img)
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=-1)
    bdist = np.linalg.norm(border - bg, axis=-1)
    # plain means: most of the border sits close to one colour
    if np.percentile(bdist, 50) > 12.0 or np.percentile(bdist, 80) > 30.0:
        return None
    thr = float(np.clip(np.percentile(bdist, 95) * 1.5 + 10.0, 18.0, 60.0))
    close = dist < thr
    # background = "close" pixels connected to the image border
    labels, _ = ndimage.label(close)
    edge_labels = np.unique(_border(labels[..., None])[:, 0])
    edge_labels = edge_labels[edge_labels > 0]
    background = np.isin(labels, edge_labels)
    fg = ~background
    r = max(1, min(h, w) // 200)
    fg = ndimage.binary_opening(fg, iterations=r)
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= max(sizes.max() * 0.05, 1)) + 1
    fg = np.isin(labels, keep)
    frac = fg.mean()
    if frac < MIN_FOREGROUND or frac > 0.97:
        return None
    return fg


def finite_clamped(name: str, value, lo: float, hi: float, error: type[ValueError] = None) -> float:
    """A finite float clamped to [lo, hi]; NaN/inf/non-numbers raise ``error`` naming ``name``."""
    error = error or ImageInputError
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise error(f"{name} must be finite, got {value!r}")
    return min(max(v, lo), hi)


def check_foreground_ratio(value) -> float:
    """The foreground ratio by its one rule (``FOREGROUND_RANGE``), for the app and the CLI alike."""
    from core.ranges import checked
    return checked("foreground ratio", value, *FOREGROUND_RANGE, error=ImageInputError)


def preprocess(img: Any, remove_background: bool = True, foreground_ratio: float = 0.85,
               size: int = 256) -> PreprocessResult:
    """Cut the object out, crop it, centre it on a white square, resize to ``size``.

    ``foreground_ratio`` (in ``FOREGROUND_RANGE``, else refused) is the object's largest side over the
    square's side. A transparent image with nothing in it is an ``ImageInputError``;
    a photo whose background is not plain keeps the whole frame (``note`` says so).
    """
    ratio = check_foreground_ratio(foreground_ratio)
    size = int(finite_clamped("size", size, 16, 2048))
    if not isinstance(img, Image.Image) or img.mode not in ("RGB", "RGBA"):
        img = load_input_image(img)
    W, H = img.size
    check_aspect(W, H)  # an image handed in directly has not been through load_input_image
    work = min(1.0, WORK_SIDE / max(W, H))  # every array below is at most WORK_SIDE on a side
    if work < 1.0:
        img = img.resize((max(1, round(W * work)), max(1, round(H * work))), Image.Resampling.BOX)
    w, h = img.size
    note = ""
    if img.mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        if alpha.max() < 0.5 / 255 or (alpha > 0.5).sum() == 0:
            raise ImageInputError("the image is fully transparent: there is no object in it")
        removed = alpha.min() < 1.0
        if not removed:
            note = "alpha channel is fully opaque; the whole image is used"
    else:
        rgb = np.asarray(img, dtype=np.float32)
        alpha = np.ones((h, w), np.float32)
        removed = False
        if remove_background:
            fg = _plain_background_mask(rgb)
            if fg is None:
                note = "no plain background found; the whole image is used"
            else:
                # soften the edge by one pixel so the composite has no jaggies
                alpha = ndimage.uniform_filter(fg.astype(np.float32), size=3)
                alpha = np.where(fg, np.maximum(alpha, 0.5), alpha * 0.5)
                removed = True
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        raise ImageInputError("no object found in the image")
    if removed and (_border(alpha[..., None])[:, 0] > 0.5).any():  # a cut-out that reaches the frame's edge
        note = "; ".join(filter(None, [note, CUT_OFF_NOTE]))
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    crop_rgb = rgb[y0:y1, x0:x1]
    crop_a = alpha[y0:y1, x0:x1, None]
    on_white = crop_rgb * crop_a + 255.0 * (1.0 - crop_a)
    # the crop goes straight to its size in the output square: no canvas larger than the output
    ch, cw = on_white.shape[:2]
    scale = size * ratio / max(ch, cw)
    tw, th = min(size, max(1, round(cw * scale))), min(size, max(1, round(ch * scale)))
    resample = Image.Resampling.BOX if scale <= 1 else Image.Resampling.BICUBIC
    obj = Image.fromarray(np.clip(on_white + 0.5, 0, 255).astype(np.uint8)).resize((tw, th), resample)
    obj_mask = Image.fromarray(np.clip(crop_a[..., 0] * 255 + 0.5, 0, 255).astype(np.uint8)).resize((tw, th), resample)
    out, mask = Image.new("RGB", (size, size), (255, 255, 255)), Image.new("L", (size, size), 0)
    at = ((size - tw) // 2, (size - th) // 2)
    out.paste(obj, at)
    mask.paste(obj_mask, at)
    bbox = tuple(int(round(v / work)) for v in (x0, y0, x1, y1)) if work < 1.0 else (x0, y0, x1, y1)
    return PreprocessResult(out, mask, bbox, removed, note)
