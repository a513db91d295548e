"""A reader of 0 A.D.'s PMD meshes (0ad-data's 4,010 models), which no mesh library reads.

Layout (Wildfire Games' format, little-endian): ``PSMD``, uint32 version (1..4), uint32 data size; uint32
vertex count, then (version >= 4) uint32 UV-set count; per vertex position float32[3], normal float32[3],
UV float32[2] per set, and a skinning blend (4 bone indices uint8, 4 weights float32); uint32 face count,
faces uint16[3]; then bones and prop points, which a static render does not need. The bind pose is the
mesh. The game's frame is +Y up. Counts are checked against the file's length before anything is read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAX_COUNT = 1 << 21


class PMDError(ValueError):
    """A PMD file that cannot be read; says what is wrong with it."""


@dataclass
class PMDMesh:
    vertices: np.ndarray    # [V, 3] float32, +Y up
    normals: np.ndarray     # [V, 3] float32
    uv: np.ndarray          # [V, 2] float32 (first UV set), OpenGL convention (v up)
    faces: np.ndarray       # [F, 3] int64


def read_pmd(data: bytes, name: str = "pmd") -> PMDMesh:
    if len(data) < 20 or data[:4] != b"PSMD":
        raise PMDError(f"{name}: not a PMD file")
    version, _size, n_verts = struct.unpack_from("<3I", data, 4)
    if not 1 <= version <= 4:
        raise PMDError(f"{name}: PMD version {version} (1..4 are read)")
    ofs = 16
    n_uv = 1
    if version >= 4:
        n_uv = struct.unpack_from("<I", data, ofs)[0]
        ofs += 4
    if not (0 < n_verts <= MAX_COUNT and 0 <= n_uv <= 8):
        raise PMDError(f"{name}: implausible counts ({n_verts} vertices, {n_uv} UV sets)")
    stride = 24 + 8 * n_uv + 20
    if ofs + stride * n_verts + 4 > len(data):
        raise PMDError(f"{name}: {n_verts} vertices do not fit in {len(data)} bytes")
    dt = np.dtype([("pos", "<f4", 3), ("nrm", "<f4", 3), ("uv", "<f4", (max(n_uv, 1), 2)) if n_uv else ("uv0", "V0"),
                   ("blend", "V20")])
    if dt.itemsize != stride:
        raise PMDError(f"{name}: vertex layout of {dt.itemsize} bytes, expected {stride}")
    verts = np.frombuffer(data, dt, n_verts, ofs)
    ofs += stride * n_verts
    n_faces = struct.unpack_from("<I", data, ofs)[0]
    ofs += 4
    if not 0 < n_faces <= MAX_COUNT or ofs + 6 * n_faces > len(data):
        raise PMDError(f"{name}: {n_faces} faces do not fit in {len(data)} bytes")
    faces = np.frombuffer(data, "<u2", 3 * n_faces, ofs).reshape(-1, 3).astype(np.int64)
    if faces.max() >= n_verts:
        raise PMDError(f"{name}: a face names vertex {faces.max()} of {n_verts}")
    pos = np.array(verts["pos"], np.float32)
    if not np.all(np.isfinite(pos)):
        raise PMDError(f"{name}: non-finite vertices")
    uv = np.array(verts["uv"][:, 0], np.float32) if n_uv else np.zeros((n_verts, 2), np.float32)
    uv[:, 1] = 1.0 - uv[:, 1]     # DirectX-style v (down) -> OpenGL
    return PMDMesh(pos, np.array(verts["nrm"], np.float32), uv, faces)


def write_pmd(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None) -> bytes:
    """A version-4 PMD with one UV set and no bones (for tests and fixtures)."""
    v = np.asarray(vertices, np.float32)
    uvs = np.zeros((len(v), 2), np.float32) if uv is None else np.asarray(uv, np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]
    rec = np.zeros(len(v), np.dtype([("pos", "<f4", 3), ("nrm", "<f4", 3), ("uv", "<f4", 2), ("blend", "V20")]))
    rec["pos"], rec["uv"] = v, uvs
    body = struct.pack("<2I", len(v), 1) + rec.tobytes() + struct.pack("<I", len(faces)) + \
        np.asarray(faces, "<u2").tobytes() + struct.pack("<2I", 0, 0)
    return b"PSMD" + struct.pack("<2I", 4, len(body)) + body
