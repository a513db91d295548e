"""A reader of Warzone 2100's PIE models (warzone2100-data's structures and map features), which no
mesh library reads.

PIE is text: ``PIE 2|3|4``, ``TYPE flags``, ``TEXTURE 0 page.png W H`` (a page of ``texpages/``), then
``LEVELS n`` and per ``LEVEL k`` a ``POINTS n`` block (x y z per line, +Y up) and a ``POLYGONS n``
block (``flags count i0 .. i{count-1}`` (flags in hex) then, with texture, one (u, v) per corner: pixels of the W x H
page in version 2, fractions of it from version 3 on, v down; flag 0x4000 adds four numbers of texture
animation before them). Every other block (``CONNECTORS``, ``NORMALS``, ``ANIMOBJECT`` ...) is
skipped by its count. Polygons of more than 3 corners are fans. All levels form the model. Counts
are checked against the lines the file has before anything is read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_COUNT = 1 << 20


class PIEError(ValueError):
    """A PIE file that cannot be read; says what is wrong with it."""


@dataclass
class PIEMesh:
    vertices: np.ndarray    # [V, 3] float32, +Y up (all levels)
    faces: np.ndarray       # [F, 3] int64
    uv: np.ndarray          # [F, 3, 2] float32 per corner, OpenGL convention (v up)
    texture: str            # the texture page's file name ("" if none)


def _count(tok: list[str], lines_left: int, name: str) -> int:
    try:
        n = int(tok[-1])
    except (ValueError, IndexError):
        raise PIEError(f"{name}: bad count in {' '.join(tok)!r}") from None
    if not 0 <= n <= min(MAX_COUNT, lines_left):
        raise PIEError(f"{name}: {tok[0]} {n} but {lines_left} lines follow")
    return n


def read_pie(text: str, name: str = "pie") -> PIEMesh:
    lines = [ln.split() for ln in text.splitlines()]
    lines = [t for t in lines if t]
    if not lines or lines[0][0] != "PIE" or len(lines[0]) < 2 or lines[0][1] not in ("2", "3", "4"):
        raise PIEError(f"{name}: not a PIE 2/3/4 file")
    version = int(lines[0][1])
    tex_name, tex_size = "", (256.0, 256.0)
    verts, faces, uvs = [], [], []
    base = 0            # vertex offset of the current level
    i = 1
    while i < len(lines):
        tok = lines[i]
        key = tok[0].upper()
        left = len(lines) - i - 1
        if key == "TEXTURE" and len(tok) >= 3:
            tex_name = tok[2]
            if len(tok) >= 5:
                try:
                    tex_size = (max(float(tok[3]), 1.0), max(float(tok[4]), 1.0))
                except ValueError:
                    pass
            i += 1
        elif key == "LEVEL":
            base = len(verts)
            i += 1
        elif key == "POINTS":
            n = _count(tok, left, name)
            try:
                pts = [[float(x) for x in lines[i + 1 + k][:3]] for k in range(n)]
            except ValueError:
                raise PIEError(f"{name}: a point is not three numbers") from None
            if any(len(p) != 3 for p in pts):
                raise PIEError(f"{name}: a point is not three numbers")
            verts += pts
            i += 1 + n
        elif key == "POLYGONS":
            n = _count(tok, left, name)
            for k in range(n):
                t = lines[i + 1 + k]
                try:
                    flags, cnt = int(t[0], 16), int(t[1])   # flags are hexadecimal
                    idx = [int(x) + base for x in t[2:2 + cnt]]
                    rest = [float(x) for x in t[2 + cnt:]]
                except (ValueError, IndexError):
                    raise PIEError(f"{name}: polygon line {' '.join(t)!r}") from None
                if cnt < 3 or len(idx) != cnt:
                    raise PIEError(f"{name}: a polygon of {cnt} corners")
                if flags & 0x4000:
                    rest = rest[4:]
                uv = np.zeros((cnt, 2), np.float32)
                if len(rest) >= 2 * cnt:
                    uv = np.asarray(rest[:2 * cnt], np.float32).reshape(cnt, 2)
                    if version == 2:
                        uv = uv / np.asarray(tex_size, np.float32)
                uv[:, 1] = 1.0 - uv[:, 1]
                for a in range(1, cnt - 1):    # a fan
                    faces.append([idx[0], idx[a], idx[a + 1]])
                    uvs.append(uv[[0, a, a + 1]])
            i += 1 + n
        elif key in ("CONNECTORS", "NORMALS", "ANIMOBJECT") and len(tok) >= 2:
            i += 1 + _count(tok, left, name)
        else:
            i += 1
    if not verts or not faces:
        raise PIEError(f"{name}: no triangles")
    v = np.asarray(verts, np.float32)
    f = np.asarray(faces, np.int64)
    if f.max() >= len(v) or f.min() < 0:
        raise PIEError(f"{name}: a polygon names vertex {f.max()} of {len(v)}")
    if not np.all(np.isfinite(v)):
        raise PIEError(f"{name}: non-finite vertices")
    return PIEMesh(v, f, np.stack(uvs).astype(np.float32), tex_name)
