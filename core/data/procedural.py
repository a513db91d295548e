"""Seeded procedural objects, so the project can make training data with no asset at all.

An object is a composition of primitives (boxes, cylinders, cones, ellipsoids, capsules,
tori, lathe profiles) arranged by one of a few templates (stack, table, chair, vehicle,
mushroom, cup, lamp, cluster, single), each part with its own colour or procedural texture
(stripes, checker, value noise, dots, grid, gradient), mapped by a per-face box projection in
the part's own frame (so textures follow the part and never stretch across a seam).

``make_object(seed, index)`` is a pure function of its arguments: object ``i`` of a corpus is
the same whichever worker builds it.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from core.data.render import Asset, Part, _crease_normals, make_asset

TEXTURE_SIZE = 64
TEMPLATES = ("single", "stack", "table", "chair", "vehicle", "mushroom", "cup", "lamp", "cluster", "lathe")


# ----------------------------------------------------------------------------- colours and textures

def random_color(rng: np.random.Generator) -> np.ndarray:
    """RGB in [0,1], mostly saturated mid-tones, sometimes greys/dark/pastel (avoids pure white)."""
    kind = rng.random()
    h = rng.random()
    if kind < 0.12:
        s, v = rng.uniform(0, 0.1), rng.uniform(0.15, 0.8)  # greys
    elif kind < 0.3:
        s, v = rng.uniform(0.15, 0.4), rng.uniform(0.75, 0.92)  # pastel
    else:
        s, v = rng.uniform(0.45, 1.0), rng.uniform(0.3, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _two_colors(rng):
    a = random_color(rng)
    b = random_color(rng)
    if np.abs(a - b).sum() < 0.4:  # make the pattern visible
        b = np.clip(1.0 - a * rng.uniform(0.5, 1.0), 0, 0.92)
    return a, b


def procedural_texture(rng: np.random.Generator, kind: str | None = None, size: int = TEXTURE_SIZE) -> tuple[Image.Image, str]:
    """A tileable RGB texture (wraps seamlessly with repeat addressing) and its kind."""
    kind = kind or rng.choice(["stripes", "checker", "noise", "dots", "grid", "gradient"])
    a, b = _two_colors(rng)
    y, x = np.mgrid[0:size, 0:size] / size  # [0,1) tile coordinates
    if kind == "stripes":
        n, m = rng.integers(1, 5), rng.integers(0, 3)  # integer frequencies keep the tile periodic
        w = ((n * x + m * y) % 1.0) < rng.uniform(0.3, 0.7)
    elif kind == "checker":
        n = 2 * rng.integers(1, 5)
        w = ((np.floor(x * n) + np.floor(y * n)) % 2) == 0
    elif kind == "noise":
        g = rng.integers(3, 9)
        grid = rng.random((g, g))
        w = ndimage.zoom(grid, size / g, order=3, mode="grid-wrap")[:size, :size]
        w = np.clip((w - w.min()) / (np.ptp(w) + 1e-9), 0, 1)
        if rng.random() < 0.5:
            w = w > 0.5  # blotches instead of smooth blends
    elif kind == "dots":
        n = rng.integers(2, 6)
        r = rng.uniform(0.15, 0.4)
        w = (((x * n) % 1 - 0.5) ** 2 + ((y * n) % 1 - 0.5) ** 2) < r ** 2
    elif kind == "grid":
        n = rng.integers(2, 7)
        t = rng.uniform(0.08, 0.25)
        w = (((x * n) % 1) < t) | (((y * n) % 1) < t)
    else:  # gradient, a triangle wave so the tile still wraps
        w = 1 - np.abs(2 * ((x + rng.random()) % 1.0) - 1)
    w = np.asarray(w, dtype=np.float64)[..., None]
    img = a * w + b * (1 - w)
    return Image.fromarray((img * 255).round().astype(np.uint8), "RGB"), str(kind)


def box_uv(mesh: trimesh.Trimesh, scale: float) -> np.ndarray:
    """Per-corner UVs [F,3,2] by projecting each face onto the plane of its dominant normal axis."""
    pos = mesh.vertices[mesh.faces]  # [F,3,3]
    axis = np.abs(mesh.face_normals).argmax(1)
    keep = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # [F,2] the other two axes
    uv = np.take_along_axis(pos, keep[:, None, :].repeat(3, 1), axis=2)
    return (uv * scale).astype(np.float32)


# ----------------------------------------------------------------------------- primitives

def _rot(rng, tilt: float = 0.0) -> np.ndarray:
    """Random rotation about Z, optionally tilted by up to ``tilt`` radians."""
    R = trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * math.pi), [0, 0, 1])
    if tilt > 0:
        ax = rng.normal(size=3)
        ax[2] = 0
        R = trimesh.transformations.rotation_matrix(rng.uniform(-tilt, tilt), ax + 1e-9) @ R
    return R


def primitive(rng: np.random.Generator, kind: str, size) -> trimesh.Trimesh:
    """A primitive whose bounding box is about ``size`` (sx, sy, sz), centred at the origin."""
    sx, sy, sz = (float(s) for s in size)
    if kind == "box":
        return trimesh.creation.box((sx, sy, sz))
    if kind == "cylinder":
        m = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=int(rng.choice([6, 8, 24, 32])))
    elif kind == "cone":
        m = trimesh.creation.cone(radius=0.5, height=1.0, sections=int(rng.choice([4, 6, 24, 32])))
        m.apply_translation([0, 0, -0.5])
    elif kind == "sphere":
        m = trimesh.creation.icosphere(subdivisions=int(rng.choice([1, 2, 3])), radius=0.5)
    elif kind == "capsule":
        m = trimesh.creation.capsule(height=1.0, radius=0.3, count=[16, 16])
    elif kind == "torus":
        r = rng.uniform(0.08, 0.2)
        m = trimesh.creation.torus(major_radius=0.5 - r, minor_radius=r, major_sections=32, minor_sections=12)
    elif kind == "lathe":
        n = int(rng.integers(4, 8))
        z = np.linspace(0, 1, n)
        r = np.clip(rng.uniform(0.15, 0.5, n), 0.05, 0.5)
        r[0] = rng.uniform(0.2, 0.5)
        prof = np.stack([np.r_[0, r, 0], np.r_[0, z, 1]], 1)
        m = trimesh.creation.revolve(prof, sections=32)
    else:
        raise ValueError(f"unknown primitive {kind!r}")
    lo, hi = m.bounds
    m.apply_translation(-(lo + hi) / 2)
    ext = np.maximum(hi - lo, 1e-6)
    m.apply_transform(np.diag([sx / ext[0], sy / ext[1], sz / ext[2], 1.0]))
    return m


class _Builder:
    """Collects parts, each with its own material."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.parts, self.kinds = rng, [], []
        self.palette = [random_color(rng) for _ in range(3)]

    def add(self, kind: str, size, at=(0, 0, 0), rotation: np.ndarray | None = None, material: str | None = None):
        rng = self.rng
        m = primitive(rng, kind, size)
        material = material or ("solid" if rng.random() < 0.4 else "texture")
        if material == "solid":
            color = self.palette[rng.integers(len(self.palette))] if rng.random() < 0.6 else random_color(rng)
            tex, uv, col = None, None, np.append(color, 1.0)
        else:
            tex, tkind = procedural_texture(rng)
            material = f"texture:{tkind}"
            uv = box_uv(m, rng.uniform(0.8, 3.0) / max(float(np.max(size)), 1e-3))  # local frame
            col = np.ones(4)
        T = np.eye(4) if rotation is None else rotation.copy()
        T[:3, 3] += np.asarray(at, dtype=np.float64)
        m.apply_transform(T)
        pos = m.vertices[m.faces].astype(np.float32)
        cols = np.broadcast_to(np.asarray(col, np.float32), (*m.faces.shape, 4)).copy()
        self.parts.append(Part(pos, _crease_normals(m), cols, uv, tex))
        self.kinds.append((kind, material))
        return m


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _template(b: _Builder, name: str) -> None:
    rng = b.rng
    P = ["box", "cylinder", "sphere", "cone", "capsule", "torus", "lathe"]
    if name == "single":
        k = rng.choice(P)
        b.add(k, (_u(rng, .3, 1), _u(rng, .3, 1), _u(rng, .3, 1)), rotation=_rot(rng, 0.5))
    elif name == "lathe":
        b.add("lathe", (w := _u(rng, .3, .8), w, _u(rng, .5, 1.2)))
    elif name == "stack":
        z = 0.0
        for _ in range(rng.integers(2, 5)):
            k = rng.choice(["box", "cylinder", "sphere", "cone", "torus", "capsule"])
            w, h = _u(rng, .25, .9), _u(rng, .15, .6)
            d = w if k in ("cylinder", "sphere", "cone", "torus") and rng.random() < 0.8 else _u(rng, .25, .9)
            b.add(k, (w, d, h), at=(_u(rng, -.05, .05), _u(rng, -.05, .05), z + h / 2))
            z += h * _u(rng, 0.8, 1.0)
    elif name == "table":
        L, W, H, t = _u(rng, .6, 1.2), _u(rng, .4, 1.0), _u(rng, .3, .8), _u(rng, .03, .1)
        round_top = rng.random() < 0.3
        b.add("cylinder" if round_top else "box", (L, L if round_top else W, t), at=(0, 0, H + t / 2))
        leg = rng.choice(["box", "cylinder", "cone"])
        lw, k = _u(rng, .04, .1), 0.7 if round_top else 1.0
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            b.add(leg, (lw, lw, H), at=(sx * (L / 2 - lw) * k, sy * (W / 2 - lw) * k, H / 2), material="solid")
    elif name == "chair":
        S, H, t = _u(rng, .4, .7), _u(rng, .3, .6), _u(rng, .04, .1)
        b.add("box", (S, S, t), at=(0, 0, H + t / 2))
        bh = _u(rng, .3, .8)
        b.add("box", (t, S, bh), at=(-S / 2 + t / 2, 0, H + t + bh / 2))
        lw = _u(rng, .03, .08)
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            b.add("cylinder" if rng.random() < .5 else "box", (lw, lw, H), at=(sx * (S / 2 - lw), sy * (S / 2 - lw), H / 2), material="solid")
    elif name == "vehicle":
        L, W, H = _u(rng, .8, 1.4), _u(rng, .4, .7), _u(rng, .2, .4)
        r = _u(rng, .1, .22)
        b.add("box" if rng.random() < .7 else "capsule", (L, W, H), at=(0, 0, r + H / 2))
        b.add(rng.choice(["box", "sphere", "cylinder"]), (L * _u(rng, .3, .6), W * _u(rng, .7, .95), H * _u(rng, .5, 1)),
              at=(_u(rng, -.2, .2) * L, 0, r + H + H * 0.3))
        wheel_rot = trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0])
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            b.add("cylinder", (2 * r, 2 * r, _u(rng, .06, .15)), at=(sx * L * .35, sy * W / 2, r), rotation=wheel_rot, material="solid")
    elif name == "mushroom":
        h, w = _u(rng, .3, .8), _u(rng, .08, .3)
        b.add(rng.choice(["cylinder", "cone", "capsule"]), (w, w, h), at=(0, 0, h / 2))
        cw = _u(rng, .4, 1.0)
        b.add(rng.choice(["sphere", "cone", "cylinder", "box"]), (cw, cw, _u(rng, .15, .5)), at=(0, 0, h))
    elif name == "cup":
        R, H = _u(rng, .3, .6), _u(rng, .3, .9)
        b.add(rng.choice(["cylinder", "lathe"]), (R, R, H), at=(0, 0, H / 2))
        hs = _u(rng, .2, .5) * H
        b.add("torus", (hs, hs, _u(rng, .03, .08)), at=(R / 2, 0, H / 2), rotation=trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
    elif name == "lamp":
        bw, ph, sw = _u(rng, .2, .5), _u(rng, .4, 1.0), _u(rng, .3, .7)
        b.add(rng.choice(["cylinder", "box"]), (bw, bw, .05), at=(0, 0, .025))
        b.add("cylinder", (.04, .04, ph), at=(0, 0, ph / 2), material="solid")
        b.add(rng.choice(["cone", "cylinder", "sphere", "lathe"]), (sw, sw, _u(rng, .2, .5)), at=(0, 0, ph))
    else:  # cluster of random primitives touching the origin region
        for _ in range(rng.integers(2, 6)):
            s = rng.uniform(.15, .7, 3)
            b.add(rng.choice(P), s, at=rng.uniform(-.3, .3, 3), rotation=_rot(rng, math.pi))


def make_parts(seed: int, index: int = 0, template: str | None = None) -> tuple[list[Part], dict]:
    """The parts of procedural object ``index`` of ``seed`` and a description for meta.json."""
    rng = np.random.default_rng([int(seed), int(index)])
    name = template or str(rng.choice(TEMPLATES, p=_TEMPLATE_P))
    b = _Builder(rng)
    _template(b, name)
    R = _rot(rng, 0.3 if rng.random() < 0.2 else 0.0)  # random heading, sometimes a tilt
    parts = [Part((p.positions @ R[:3, :3].T).astype(np.float32), (p.normals @ R[:3, :3].T).astype(np.float32),
                  p.colors, p.uv, p.texture) for p in b.parts]
    return parts, {"template": name, "parts": [{"primitive": k, "material": m} for k, m in b.kinds]}


_TEMPLATE_P = np.array([1.5, 1.5, 1.0, 0.8, 1.0, 1.0, 0.8, 0.8, 2.0, 1.0])
_TEMPLATE_P = _TEMPLATE_P / _TEMPLATE_P.sum()


def make_object(seed: int, index: int = 0, template: str | None = None) -> Asset:
    """A normalised, render-ready procedural object."""
    parts, desc = make_parts(seed, index, template)
    asset = make_asset(parts, source=f"procedural:seed={seed}:index={index}", licence="generated (no licence needed)")
    asset.normalisation["procedural"] = desc
    return asset
