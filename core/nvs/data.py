"""Pre-tokenised NVS training data: the corpus is encoded by the (frozen) tokenizer once.

Encoding dominates a training step on a CPU, so each object folder becomes one ``.npz``
under ``<cache>/<tokenizer fingerprint>/<split>/``: multi-scale indices of every view
(concatenated, coarse first), poses, FOV, the views at the learned encoder's input size,
and ``{i}e.npy`` embeddings when the folder has them. A new tokenizer gets a new folder.

A guide model (``NVSConfig.guide``) also needs, per training pair, the guide: the photo of
the source view lifted by the reconstruction model and rasterised at the target camera, then
tokenised. ``build_guides`` writes those once per corpus, tokenizer and reconstruction model
(``<cache>/<tokenizer>/guides-<recon fingerprint>[-zoom]/<split>/``): for a few source views of
each object, the guide's tokens at every view of it. Guides come from the model's prediction
from the source view alone, never from the ground-truth mesh, so training sees what inference sees.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core import cameras
from core.data.io import DataError, image_to_tensor, index_objects, read_view, zoom_images


def cache_dir(root: str | Path, tok_hash: str, split: str) -> Path:
    return Path(root) / tok_hash / split


@torch.no_grad()
def tokenise_objects(data, split: str | None, tok, out: Path, small: int, max_objects: int | None = None,
                     batch: int = 12, progress: bool = True) -> int:
    """Encode every object folder not cached yet; returns how many were written."""
    from tqdm import tqdm
    objs = index_objects(data, split, report=lambda m: print(f"skip: {m}"))[:max_objects]
    out.mkdir(parents=True, exist_ok=True)
    R, n = tok.config.resolution, 0
    for o in tqdm(objs, desc=f"tokenise {split or 'all'}", disable=not progress):
        dst = out / f"{o.folder.name}.npz"
        if dst.is_file():
            continue
        try:
            views = [read_view(o.folder, v, R, fov_deg=o.fov_deg) for v in o.views]
        except DataError as e:
            print(f"skip: {e}")
            continue
        imgs = torch.stack([image_to_tensor(v.image) for v in views])
        idx = torch.cat([torch.cat(tok.encode_indices(imgs[i:i + batch].to(tok.device)), 1).cpu()
                         for i in range(0, len(imgs), batch)])
        smalls = np.stack([np.asarray(v.image.resize((small, small), Image.Resampling.BOX)) for v in views])
        arrays = dict(tokens=idx.numpy().astype(np.int16), poses=np.stack([v.w2c for v in views]).astype(np.float32),
                      fov=np.float32(o.fov_deg), small=smalls.astype(np.uint8), views=np.array(o.views))
        if all(v.embedding is not None for v in views):
            arrays["emb"] = np.stack([v.embedding for v in views]).astype(np.float32)
        tmp = dst.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(dst)
        n += 1
    return n


@dataclass
class TokenObject:
    name: str
    tokens: np.ndarray   # [V, L] int16
    poses: np.ndarray    # [V, 3, 4]
    small: np.ndarray    # [V, r, r, 3] uint8
    emb: np.ndarray | None
    fov: float
    views: list[str]


def guide_dir(root: str | Path, tok_hash: str, recon_hash: str, zoom: bool, split: str) -> Path:
    return Path(root) / tok_hash / f"guides-{recon_hash}{'-zoom' if zoom else ''}" / split


def guide_sources(n_views: int, per_object: int, name: str) -> list[int]:
    """The views of an object whose lifts are cached: a stable sample of ``per_object`` of them."""
    rng = random.Random(f"guide:{name}")
    return sorted(rng.sample(range(n_views), min(per_object, n_views)))


@torch.no_grad()
def build_guides(data, split: str, tok, recon, out: Path, per_object: int = 2, zoom: bool = False,
                 max_objects: int | None = None, progress: bool = True) -> dict:
    """Guides of every (cached source view, view) pair of each object not cached yet -> counts.

    Each source view is lifted by ``recon`` (a ``ReconPipeline``, photo projection on) and meshed
    once; the mesh is rasterised at every view's camera (``zoom``: moved to the source's distance,
    as a distance_zoom model's targets are) and tokenised. A view that cannot be lifted is stored
    as not ok and never sampled as a source."""
    from tqdm import tqdm
    from core.nvs.guide import lift_guide
    objs = index_objects(data, split, report=lambda m: print(f"skip: {m}"))[:max_objects]
    out.mkdir(parents=True, exist_ok=True)
    R, done, failed = tok.config.resolution, 0, 0
    for o in tqdm(objs, desc=f"guides {split}", disable=not progress):
        dst = out / f"{o.folder.name}.npz"
        if dst.is_file():
            continue
        srcs = guide_sources(len(o.views), per_object, o.folder.name)
        try:
            views = [read_view(o.folder, v, R, fov_deg=o.fov_deg, extras=False) for v in o.views]
        except DataError as e:
            print(f"skip: {e}")
            continue
        tokens = np.zeros((len(srcs), len(views), sum(p * p for p in tok.config.patch_nums)), np.int16)
        ok = np.zeros(len(srcs), bool)
        for i, s in enumerate(srcs):
            guide, note = lift_guide(recon, views[s].image, views[s].w2c, o.fov_deg, R)
            if guide is None:
                failed += 1
                continue
            cams = [cameras.at_source_distance(views[s].w2c, v.w2c)[0] if zoom else v.w2c for v in views]
            x = torch.stack([image_to_tensor(guide.render(c).image) for c in cams]).to(tok.device)
            guide.close()
            tokens[i] = torch.cat(tok.encode_indices(x), 1).cpu().numpy()
            ok[i] = True
        tmp = dst.with_suffix(".tmp.npz")
        np.savez(tmp, sources=np.array(srcs), tokens=tokens, ok=ok, views=np.array(o.views))
        tmp.replace(dst)
        done += 1
    return {"objects": done, "failed_lifts": failed}


@dataclass
class GuideSet:
    """One object's cached guides: ``tokens[i, t]`` is the guide of source view ``sources[i]`` at view
    ``views[t]`` (the object's views when the guides were built)."""
    sources: np.ndarray
    tokens: np.ndarray
    ok: np.ndarray
    views: tuple[str, ...] = ()

    def usable(self) -> list[int]:
        return [int(s) for s, k in zip(self.sources, self.ok) if k]

    def of(self, s: int, t: int) -> np.ndarray:
        return self.tokens[list(self.sources).index(s), t]


def guide_fits(guides: dict[str, GuideSet], obj: TokenObject) -> bool:
    """``obj`` has cached guides, at least one source lifted, built for the same views in the same order."""
    g = guides.get(obj.name)
    return g is not None and bool(g.usable()) and list(g.views) == list(obj.views)


def load_guides(folder: Path, skip: set[str] | None = None) -> dict[str, GuideSet]:
    """Cached guides in ``folder`` by object name (those named in ``skip`` are left out: already loaded)."""
    out = {}
    for f in sorted(Path(folder).glob("*.npz")):
        if not (f.name.endswith(".tmp.npz") or (skip is not None and f.stem in skip)):
            with np.load(f) as z:
                views = tuple(str(v) for v in z["views"]) if "views" in z else ()  # () : never matches
                out[f.stem] = GuideSet(z["sources"], z["tokens"], z["ok"], views)
    return out


def load_cached(folder: Path, skip: set[str] | None = None) -> list[TokenObject]:
    """Cached objects in ``folder`` (those named in ``skip`` are left out: already loaded)."""
    out = []
    for f in sorted(Path(folder).glob("*.npz")):
        if f.name.endswith(".tmp.npz") or (skip is not None and f.stem in skip):
            continue
        with np.load(f) as z:
            out.append(TokenObject(f.stem, z["tokens"], z["poses"], z["small"], z["emb"] if "emb" in z else None,
                                   float(z["fov"]), [str(v) for v in z["views"]]))
    return out


class DistanceZoom:
    """Targets as the source's distance would see them (``NVSConfig.distance_zoom``): the target
    camera slides along its ray to the source's radius and its view is scaled by r_t / r_s about
    the object's centre, then tokenised. The cache holds each view once, at its own distance,
    so these targets are read and encoded per batch (about 0.3 s for 16 on one CPU thread)."""

    def __init__(self, folders: dict[str, Path], tok):
        self.folders, self.tok = folders, tok

    @staticmethod
    def target_pose(src_w2c, tgt_w2c) -> tuple[np.ndarray, float]:
        """The target camera at the source's distance, and the scale r_t / r_s for its image."""
        w, k = cameras.at_source_distance(src_w2c, tgt_w2c)
        return w, 1.0 / k

    @torch.no_grad()
    def tokens(self, items: list[tuple[TokenObject, int, np.ndarray, float]]) -> torch.Tensor:
        """(object, target view, moved target camera, scale) -> concatenated indices [N, L]."""
        R = self.tok.config.resolution
        imgs = []
        for obj, t, w2c, _ in items:
            if obj.name not in self.folders:
                raise DataError(f"distance zoom: no image folder for cached object {obj.name}")
            imgs.append(image_to_tensor(read_view(self.folders[obj.name], obj.views[t], R, fov_deg=obj.fov,
                                                  extras=False).image))
        x = zoom_images(torch.stack(imgs), [k for *_, k in items],
                        [cameras.origin_ndc(w, obj.fov) for obj, _, w, _ in items])
        return torch.cat(self.tok.encode_indices(x.to(self.tok.device)), 1).cpu()


class PairSampler:
    """Random (source, target) pairs; with ``zero_pose_rate`` the target is the source itself
    (so generating the source camera learns to reproduce the source). With ``zoom`` (a
    DistanceZoom) every target is seen from the source's distance."""

    def __init__(self, objects: list[TokenObject], zero_pose_rate: float = 0.15, seed: int | None = None,
                 zoom: DistanceZoom | None = None, guides: dict[str, GuideSet] | None = None):
        if guides is not None:  # a guide model trains only on sources with a cached lift of these very views
            objects = [o for o in objects if guide_fits(guides, o)]
        if not objects:
            raise DataError("no tokenised objects" + (" with cached guides" if guides is not None else ""))
        self.objects, self.zero_pose_rate, self.zoom, self.guides = objects, zero_pose_rate, zoom, guides
        self.rng = random.Random(seed)

    def pairs(self, n: int, targets_per_source: int = 1) -> list[tuple[int, int, int]]:
        """n (object, source, target) triples; each source's ``targets_per_source`` targets are
        consecutive (the model then runs that source's prefix once for all of them)."""
        out, k = [], max(1, int(targets_per_source))
        for _ in range(max(1, n // k)):
            o = self.rng.randrange(len(self.objects))
            V = len(self.objects[o].views)
            s = self.rng.choice(self.guides[self.objects[o].name].usable()) if self.guides is not None \
                else self.rng.randrange(V)
            for _ in range(k):
                t = s if self.rng.random() < self.zero_pose_rate else self.rng.choice([v for v in range(V) if v != s])
                out.append((o, s, t))
        return out

    def batch(self, pairs, device="cpu") -> dict[str, torch.Tensor]:
        objs = self.objects
        src = torch.from_numpy(np.stack([objs[o].tokens[s] for o, s, _ in pairs]).astype(np.int64))
        tgt = torch.from_numpy(np.stack([objs[o].tokens[t] for o, _, t in pairs]).astype(np.int64))
        tgt_poses = [objs[o].poses[t] for o, _, t in pairs]
        if self.zoom is not None:
            moved = [self.zoom.target_pose(objs[o].poses[s], objs[o].poses[t]) for o, s, t in pairs]
            tgt_poses = [w for w, _ in moved]
            rows = [i for i, (_, k) in enumerate(moved) if abs(k - 1) > 1e-6]
            if rows:
                tgt[rows] = self.zoom.tokens([(objs[pairs[i][0]], pairs[i][2], *moved[i]) for i in rows])
        rel = np.stack([cameras.relative_pose(objs[o].poses[s], w) for (o, s, _), w in zip(pairs, tgt_poses)])
        small = np.stack([objs[o].small[s] for o, s, _ in pairs])
        b = dict(src=src.to(device), tgt=tgt.to(device), rel_pose=torch.from_numpy(rel).to(device),
                 small=(torch.from_numpy(small).permute(0, 3, 1, 2).float() / 127.5 - 1).to(device))
        if all(objs[o].emb is not None for o, _, _ in pairs):
            b["emb"] = torch.from_numpy(np.stack([objs[o].emb[s] for o, s, _ in pairs])).to(device)
        if self.guides is not None:
            g = np.stack([self.guides[objs[o].name].of(s, t) for o, s, t in pairs]).astype(np.int64)
            b["guide"] = torch.from_numpy(g).to(device)
        return b


def split_scales(idx: torch.Tensor, patch_nums) -> list[torch.Tensor]:
    """Concatenated indices [B, L] -> per-scale list of [B, pn*pn]."""
    return list(idx.split([p * p for p in patch_nums], dim=1))


class OnlineSampler:
    """Pairs read from disk and tokenised on the fly by the *current* tokenizer: training can
    start while the tokenizer is still training (reload it with ``set_tokenizer``), at the
    cost of encoding each batch. ``targets_per_source`` targets share one source encode."""

    def __init__(self, data, split: str | None, tok, small: int = 64, zero_pose_rate: float = 0.15,
                 targets_per_source: int = 2, seed: int | None = None, max_objects: int | None = None):
        from core.data.io import index_objects
        self.objects = index_objects(data, split)[:max_objects]
        if not self.objects:
            raise DataError(f"{data}: no object folders with at least two posed views")
        self.tok, self.small, self.zero_pose_rate, self.k = tok, small, zero_pose_rate, targets_per_source
        self.rng = random.Random(seed)

    def pairs(self, n: int) -> list[tuple[int, int, list[int]]]:
        out = []
        for _ in range(max(1, n // self.k)):
            o = self.rng.randrange(len(self.objects))
            V = len(self.objects[o].views)
            s = self.rng.randrange(V)
            ts = [s if self.rng.random() < self.zero_pose_rate else self.rng.choice([v for v in range(V) if v != s])
                  for _ in range(self.k)]
            out.append((o, s, ts))
        return out

    @torch.no_grad()
    def batch(self, pairs, device="cpu") -> dict[str, torch.Tensor]:
        R = self.tok.config.resolution
        imgs, poses, src_rows, tgt_rows = [], [], [], []
        for o, s, ts in pairs:
            obj = self.objects[o]
            views = sorted({s, *ts})
            base = len(imgs)
            for v in views:
                rv = read_view(obj.folder, obj.views[v], R, fov_deg=obj.fov_deg, extras=False)
                imgs.append(image_to_tensor(rv.image))
                poses.append(rv.w2c)
            for t in ts:
                src_rows.append(base + views.index(s))
                tgt_rows.append(base + views.index(t))
        x = torch.stack(imgs).to(self.tok.device)
        idx = torch.cat(self.tok.encode_indices(x), 1)
        src, tgt = torch.tensor(src_rows), torch.tensor(tgt_rows)
        rel = np.stack([cameras.relative_pose(poses[a], poses[b]) for a, b in zip(src_rows, tgt_rows)])
        small = torch.nn.functional.interpolate(x[src], size=(self.small, self.small), mode="area")
        return dict(src=idx[src].to(device), tgt=idx[tgt].to(device), rel_pose=torch.from_numpy(rel).to(device),
                    small=small.to(device))
