"""A reader of SuperTuxKart's SPM meshes (supertuxkart-data's karts, library props and track
objects), which no mesh library reads.

Layout (little-endian): ``SP``; a byte whose top bits are the version (1) and low bits the kind
(1: skinned, 2: static; 0, space-partitioned, was never shipped); a flags byte (bit 0 normals, bit 1
vertex colours, bit 2 tangents); a float32[6] bounding box; uint16 material count and per material
two length-prefixed (uint8) texture names; uint16 section count and per section a uint16 buffer
count, each buffer a uint32 vertex count (at most 65535), a uint32 index count, a uint16 material,
then per vertex: position float32[3], a packed normal uint32 (with normals), a colour (with
colours: a uint8 that is 128 for white, else followed by r, g, b), half-float UV (when the
material has a first texture; a second pair when it has a second; then a packed tangent uint32
with tangents), joints int16[4] + half-float weights[4] (skinned); then uint8 indices when the buffer
has at most 255 vertices, else uint16. Animation data after the sections is not needed: the
vertices are the bind pose. The file's frame is Irrlicht's (+Y up, left-handed); UVs have v down.
Every count is checked against the bytes left before anything is read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np


class SPMError(ValueError):
    """An SPM file that cannot be read; says what is wrong with it."""


@dataclass
class SPMBuffer:
    vertices: np.ndarray    # [V, 3] float32, the file's frame
    faces: np.ndarray       # [F, 3] int64
    uv: np.ndarray | None   # [V, 2] float32, OpenGL convention (v up); None without a texture
    colors: np.ndarray      # [V, 3] float32 in [0, 1] (white without vertex colours)
    texture: str            # the first texture's name ("" if none)


class _Reader:
    def __init__(self, data: bytes, name: str):
        self.data, self.name, self.ofs = data, name, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.ofs + n > len(self.data):
            raise SPMError(f"{self.name}: truncated ({n} bytes needed at {self.ofs} of {len(self.data)})")
        b = self.data[self.ofs:self.ofs + n]
        self.ofs += n
        return b

    def unpack(self, fmt: str):
        s = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(s))


def read_spm(data: bytes, name: str = "spm") -> list[SPMBuffer]:
    r = _Reader(data, name)
    if len(data) < 30 or r.take(2) != b"SP":
        raise SPMError(f"{name}: not an SPM file")
    kind_byte, flags = r.unpack("<BB")
    version, kind = kind_byte >> 3, kind_byte & ~0x08
    if version != 1:
        raise SPMError(f"{name}: SPM version {version} (1 is read)")
    if kind not in (1, 2):
        raise SPMError(f"{name}: SPM kind {kind} (static and skinned are read)")
    has_normal, has_color, has_tangent = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    r.take(24)   # bounding box
    (n_mat,) = r.unpack("<H")
    mats = []
    for _ in range(n_mat):
        names = []
        for _ in range(2):
            (n,) = r.unpack("<B")
            names.append(r.take(n).decode("latin-1"))
        mats.append(names)
    (n_sec,) = r.unpack("<H")
    out = []
    for _ in range(n_sec):
        (n_buf,) = r.unpack("<H")
        for _ in range(n_buf):
            n_v, n_i, mat = r.unpack("<IIH")
            if not 0 < n_v <= 65535 or n_i % 3 or n_i > 3 << 20:
                raise SPMError(f"{name}: a buffer of {n_v} vertices and {n_i} indices")
            if mat >= len(mats):
                raise SPMError(f"{name}: material {mat} of {len(mats)}")
            uv1, uv2 = bool(mats[mat][0]), bool(mats[mat][1])
            fixed = 12 + 4 * has_normal + (4 * uv1 + 4 * (uv1 and uv2) + 4 * (uv1 and has_tangent)) + 16 * (kind == 1)
            if r.ofs + n_v * fixed > len(data):
                raise SPMError(f"{name}: {n_v} vertices do not fit in {len(data)} bytes")
            pos = np.empty((n_v, 3), np.float32)
            col = np.ones((n_v, 3), np.float32)
            uv = np.empty((n_v, 2), np.float16) if uv1 else None
            for k in range(n_v):
                pos[k] = np.frombuffer(r.take(12), "<f4")
                if has_normal:
                    r.take(4)
                if has_color:
                    (ci,) = r.unpack("<B")
                    if ci != 128:
                        col[k] = np.frombuffer(r.take(3), np.uint8) / 255.0
                if uv1:
                    uv[k] = np.frombuffer(r.take(4), "<f2")
                    if uv2:
                        r.take(4)
                    if has_tangent:
                        r.take(4)
                if kind == 1:
                    r.take(16)
            idx = np.frombuffer(r.take(n_i * (2 if n_v > 255 else 1)), "<u2" if n_v > 255 else "u1").astype(np.int64)
            if len(idx) and idx.max() >= n_v:
                raise SPMError(f"{name}: an index names vertex {idx.max()} of {n_v}")
            if not np.all(np.isfinite(pos)):
                raise SPMError(f"{name}: non-finite vertices")
            uvf = None
            if uv is not None:
                uvf = uv.astype(np.float32)
                uvf[:, 1] = 1.0 - uvf[:, 1]
                if not np.all(np.isfinite(uvf)):
                    raise SPMError(f"{name}: non-finite texture coordinates")
            out.append(SPMBuffer(pos, idx.reshape(-1, 3), uvf, col, mats[mat][0]))
    return out


def write_spm(buffers: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]]) -> bytes:
    """A static SPM (no normals, colours or tangents) of (vertices, faces, uv or None, texture)
    buffers, one material each (for tests and fixtures)."""
    out = [b"SP", struct.pack("<BB", (1 << 3) | 2, 0), struct.pack("<6f", *([0.0] * 6)),
           struct.pack("<H", len(buffers))]
    for _, _, uv, tex in buffers:
        t = tex.encode() if uv is not None else b""
        out += [struct.pack("<B", len(t)), t, struct.pack("<B", 0)]
    out.append(struct.pack("<HH", 1, len(buffers)))
    for m, (v, f, uv, _) in enumerate(buffers):
        v, f = np.asarray(v, "<f4"), np.asarray(f)
        out.append(struct.pack("<IIH", len(v), f.size, m))
        for k in range(len(v)):
            out.append(v[k].tobytes())
            if uv is not None:
                out.append(np.asarray([uv[k][0], 1.0 - uv[k][1]], "<f2").tobytes())
        out.append(f.astype("<u2" if len(v) > 255 else "u1").tobytes())
    return b"".join(out)
