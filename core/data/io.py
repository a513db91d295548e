"""Read and write the multi-view dataset format of DESIGN.md (ArchonView's, extended).

An object folder holds, per view ``i`` (three digits): ``{i}.png`` (RGB on white or
RGBA), ``{i}.npy`` (3x4 world-to-camera), and optionally ``{i}e.npy`` (image
embedding), ``{i}_alpha.png``, ``{i}_depth.npy`` (or ``.npz``, compressed); plus optional ``meta.json`` and
``mesh.ply``. A dataset root holds ``train/`` and ``val/`` of such folders.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core import cameras

_VIEW_PNG = re.compile(r"^(\d+)\.png$")


class DataError(ValueError):
    """A dataset file that cannot be used; the message names the file."""


# ----------------------------------------------------------------------------- images

def composite_on_white(img: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, transparent parts composited onto white."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(float(arr.max()), 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resize_area(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` with an area (box) filter when shrinking."""
    if img.size == (size, size):
        return img
    shrinking = img.size[0] >= size and img.size[1] >= size
    return img.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)


def zoom_images(x: torch.Tensor, scale, centre=None) -> torch.Tensor:
    """Scale images ``[B, 3, H, W]`` in [-1, 1] by ``scale`` [B] about ``centre`` [B, 2]
    (``grid_sample`` coordinates, default the image centre): what leaves the frame is cut,
    what enters it is white. A camera slid along its ray through a point sees the image
    scaled about that point's projection (exactly for the point's depth plane).
    Shrinking is sampled at 2x and box-filtered so it does not alias."""
    B, _, H, W = x.shape
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(B).to(x.device)
    c = torch.zeros(B, 2) if centre is None else torch.as_tensor(centre, dtype=torch.float32).reshape(B, 2)
    c = c.to(x.device)
    out = x.float().clone()
    for group, ss in ((s < 1 - 1e-6, 2), (s > 1 + 1e-6, 1)):  # a scale of 1 (to float noise) stays untouched
        if not bool(group.any()):
            continue
        inv = 1.0 / s[group]
        theta = torch.zeros(len(inv), 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = inv
        theta[:, :, 2] = c[group] * (1 - inv)[:, None]
        grid = torch.nn.functional.affine_grid(theta, [len(inv), 3, H * ss, W * ss], align_corners=False)
        y = torch.nn.functional.grid_sample(out[group] - 1, grid, mode="bilinear", padding_mode="zeros",
                                            align_corners=False) + 1
        out[group] = torch.nn.functional.avg_pool2d(y, ss) if ss > 1 else y
    return out.to(x.dtype)


def load_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Read an image file as RGB on white, optionally resized (area filter) to ``size``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            img = composite_on_white(im)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return resize_area(img, size) if size else img


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1] (the models' convention)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """Float tensor [3, H, W] (or [1, 3, H, W]) in [-1, 1] -> PIL RGB."""
    if t.dim() == 4:
        t = t[0]
    arr = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


# ----------------------------------------------------------------------------- folders

def is_object_dir(path: Path) -> bool:
    return path.is_dir() and any(_VIEW_PNG.match(p.name) for p in path.iterdir())


SPLITS = ("train", "val", "val_unseen")  # DESIGN.md: val_unseen holds sources with nothing in train


def list_objects(root: str | Path, split: str | None = None) -> list[Path]:
    """Object folders under ``root``: a dataset root (``train/``, ``val/``, ``val_unseen/``; ``split``
    picks one, default all), a folder of object folders, or a single object folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if is_object_dir(root):
        return [root]
    splits = [root / s for s in (SPLITS if split is None else (split,)) if (root / s).is_dir()]
    if splits:
        return sorted(p for s in splits for p in s.iterdir() if is_object_dir(p))
    return sorted(p for p in root.iterdir() if is_object_dir(p))  # a plain folder of objects has no split


def view_ids(obj: str | Path) -> list[str]:
    """The view ids (``'000'``, ``'001'``, ...) of an object folder, in order."""
    return sorted((m.group(1) for p in Path(obj).iterdir() if (m := _VIEW_PNG.match(p.name))), key=lambda s: (len(s), s))


def read_meta(obj: str | Path) -> dict[str, Any]:
    path = Path(obj) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def object_fov(obj: str | Path) -> float:
    fov = read_meta(obj).get("fov_deg", cameras.DEFAULT_FOV_DEG)
    try:
        fov = float(fov)
    except (TypeError, ValueError):
        raise DataError(f"{Path(obj) / 'meta.json'}: fov_deg is not a number") from None
    if not 0 < fov < 180:
        raise DataError(f"{Path(obj) / 'meta.json'}: fov_deg {fov} out of range")
    return fov


def load_pose(path: str | Path) -> np.ndarray:
    """A 3x4 world-to-camera matrix (a 4x4 is accepted and cut to 3x4)."""
    path = Path(path)
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable .npy ({e})") from None
    if a.shape == (4, 4):
        a = a[:3]
    if a.shape != (3, 4):
        raise DataError(f"{path}: shape {a.shape}, expected (3, 4) world-to-camera")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise DataError(f"{path}: pose is not finite numbers")
    return a.astype(np.float32)


@dataclass
class View:
    image: Image.Image  # RGB on white
    w2c: np.ndarray  # 3x4 float32
    fov_deg: float = cameras.DEFAULT_FOV_DEG
    alpha: np.ndarray | None = None  # HxW float32 in [0, 1]
    depth: np.ndarray | None = None  # HxW float32, 0 where empty
    embedding: np.ndarray | None = None


def read_view(obj: str | Path, vid: str, size: int | None = None, *, extras: bool = True,
              fov_deg: float | None = None) -> View:
    """Read one view; extended files (alpha, depth, embedding) only when present."""
    obj = Path(obj)
    png = obj / f"{vid}.png"
    image = load_image(png, size)
    alpha = depth = emb = None
    if extras:
        a_path = obj / f"{vid}_alpha.png"
        if a_path.is_file():
            try:
                with Image.open(a_path) as im:
                    a = im.convert("L")
                    if size and a.size != (size, size):
                        a = a.resize((size, size), Image.Resampling.BOX)
                    alpha = np.asarray(a, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{a_path}: unreadable mask ({e})") from None
        else:
            try:
                with Image.open(png) as im:
                    if im.mode == "RGBA":
                        a = im.getchannel("A")
                        if size and a.size != (size, size):
                            a = a.resize((size, size), Image.Resampling.BOX)
                        alpha = np.asarray(a, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError):
                pass
        d_path = depth_path(obj, vid)
        if d_path is not None:
            depth = load_depth(d_path)
            if size and depth.shape != (size, size):
                depth = _resize_depth(depth, size)
        e_path = obj / f"{vid}e.npy"
        if e_path.is_file():
            try:
                emb = np.load(e_path, allow_pickle=False).astype(np.float32).reshape(-1)
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{e_path}: unreadable embedding ({e})") from None
    return View(image, load_pose(obj / f"{vid}.npy"), fov_deg if fov_deg is not None else object_fov(obj),
                alpha, depth, emb)


def depth_path(obj: Path, vid: str) -> Path | None:
    """A view's depth map: ``{i}_depth.npy``, or ``{i}_depth.npz`` (the same array, compressed: the
    background's zeros and float16 depths shrink ~4x, which a 256 px corpus needs)."""
    for name in (f"{vid}_depth.npy", f"{vid}_depth.npz"):
        if (Path(obj) / name).is_file():
            return Path(obj) / name
    return None


def load_depth(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return z["depth"].astype(np.float32)
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path}: unreadable depth ({e})") from None


def save_depth(folder: Path, vid: str, depth: np.ndarray, dtype: str = "float16", compressed: bool = False) -> Path:
    path = Path(folder) / f"{vid}_depth.{'npz' if compressed else 'npy'}"
    if compressed:
        np.savez_compressed(path, depth=np.asarray(depth).astype(dtype))
    else:
        np.save(path, np.asarray(depth).astype(dtype))
    return path


def _resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize (averaging depth across an edge invents surfaces)."""
    h, w = depth.shape
    ii = (np.arange(size) * h // size).clip(0, h - 1)
    jj = (np.arange(size) * w // size).clip(0, w - 1)
    return depth[ii][:, jj]


def write_view(obj: str | Path, vid: str | int, image: Image.Image, w2c: np.ndarray, *,
               alpha: np.ndarray | None = None, depth: np.ndarray | None = None,
               embedding: np.ndarray | None = None) -> None:
    obj = Path(obj)
    obj.mkdir(parents=True, exist_ok=True)
    vid = f"{int(vid):03d}" if not isinstance(vid, str) else vid
    composite_on_white(image).save(obj / f"{vid}.png")
    np.save(obj / f"{vid}.npy", np.asarray(w2c, dtype=np.float32)[:3, :4])
    if alpha is not None:
        a = np.asarray(alpha)
        a8 = a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(a8, "L").save(obj / f"{vid}_alpha.png")
    if depth is not None:
        np.save(obj / f"{vid}_depth.npy", np.asarray(depth, dtype=np.float32))
    if embedding is not None:
        np.save(obj / f"{vid}e.npy", np.asarray(embedding, dtype=np.float32).reshape(-1))


def write_meta(obj: str | Path, meta: dict[str, Any]) -> None:
    Path(obj).mkdir(parents=True, exist_ok=True)
    (Path(obj) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------- torch dataset

@dataclass
class ObjectIndex:
    folder: Path
    views: list[str]
    fov_deg: float


def index_objects(root: str | Path | Iterable[Path], split: str | None = None, min_views: int = 2,
                  report=None) -> list[ObjectIndex]:
    """Index object folders, skipping (and reporting) those that cannot be used."""
    objs = list_objects(root, split) if isinstance(root, (str, Path)) else list(root)
    out = []
    for o in objs:
        try:
            ids = [v for v in view_ids(o) if (o / f"{v}.npy").is_file()]
            if len(ids) >= min_views:
                out.append(ObjectIndex(o, ids, object_fov(o)))
            elif report:
                report(f"{o}: fewer than {min_views} views with poses, skipped")
        except DataError as e:
            if report:
                report(str(e))
    return out


class ViewPairDataset(torch.utils.data.Dataset):
    """(source view, target view) pairs of one object, for NVS and reconstruction.

    Each item is a dict of tensors: ``source``/``target`` [3, S, S] in [-1, 1],
    ``source_w2c``/``target_w2c`` [3, 4], ``rel_pose`` [4] (target minus source,
    DESIGN.md encoding), ``fov_deg``, ``target_alpha`` [S, S] (ones where unknown is
    replaced by a white-threshold estimate), and ``source_embedding`` when ``{i}e.npy``
    exists. ``pairs_per_object`` random pairs are drawn per object per epoch; with
    ``seed`` set the pairs are fixed (for validation).
    """

    def __init__(self, root, size: int, split: str | None = None, pairs_per_object: int = 4,
                 seed: int | None = None, with_embeddings: bool = False):
        self.objects = index_objects(root, split)
        if not self.objects:
            raise DataError(f"{root}: no object folders with at least two posed views")
        self.size, self.pairs_per_object, self.seed = size, pairs_per_object, seed
        self.with_embeddings = with_embeddings

    def __len__(self) -> int:
        return len(self.objects) * self.pairs_per_object

    def _pair(self, idx: int) -> tuple[ObjectIndex, str, str]:
        obj = self.objects[idx // self.pairs_per_object]
        rng = random.Random(None if self.seed is None else self.seed * 1_000_003 + idx)
        s, t = rng.sample(obj.views, 2)
        return obj, s, t

    def __getitem__(self, idx: int) -> dict[str, Any]:
        obj, s, t = self._pair(idx)
        src = read_view(obj.folder, s, self.size, fov_deg=obj.fov_deg, extras=self.with_embeddings)
        tgt = read_view(obj.folder, t, self.size, fov_deg=obj.fov_deg)
        item = {
            "source": image_to_tensor(src.image), "target": image_to_tensor(tgt.image),
            "source_w2c": torch.from_numpy(src.w2c), "target_w2c": torch.from_numpy(tgt.w2c),
            "rel_pose": torch.from_numpy(cameras.relative_pose(src.w2c, tgt.w2c)),
            "fov_deg": torch.tensor(obj.fov_deg, dtype=torch.float32),
            "target_alpha": torch.from_numpy(tgt.alpha if tgt.alpha is not None else white_mask_estimate(tgt.image)),
            "object": obj.folder.name,
        }
        if self.with_embeddings and src.embedding is not None:
            item["source_embedding"] = torch.from_numpy(src.embedding)
        return item


def white_mask_estimate(img: Image.Image, threshold: int = 250) -> np.ndarray:
    """Foreground estimate of an RGB-on-white render with no alpha file."""
    arr = np.asarray(img.convert("RGB"))
    return (arr.min(axis=2) < threshold).astype(np.float32)
