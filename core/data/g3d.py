"""A reader of Glest's G3D v4 models (megaglest-data's units and tileset objects), which no mesh
library reads.

Layout (little-endian): ``G3D`` + uint8 version (4); uint16 mesh count, uint8 model type; per mesh a
header (name char[64]; uint32 frame, vertex and index counts; float32 diffuse[3], specular[3],
specular power, opacity; uint32 properties (bit 0: team colour in the texture's alpha); uint32 texture flags), one char[64] path per set texture flag (bit 0 is the diffuse map,
relative to the model's folder), then vertices float32[frames, V, 3], normals (the same), texture
coordinates float32[V, 2] when any texture is set, and indices uint32[I] (triangles). Only frame 0 is
read: a unit's pose. Every count is checked against the file's length before anything is read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAX_COUNT = 1 << 21
_HEADER = struct.Struct("<64s3I3f3f2f2I")   # 116 bytes


class G3DError(ValueError):
    """A G3D file that cannot be read; says what is wrong with it."""


@dataclass
class G3DMesh:
    name: str
    vertices: np.ndarray    # [V, 3] float32, frame 0, the model's own frame
    uv: np.ndarray | None   # [V, 2] float32, OpenGL convention (v up); None without a texture
    faces: np.ndarray       # [F, 3] int64
    diffuse: tuple          # RGB in [0, 1]
    texture: str            # diffuse map path relative to the model, "" if none
    team_colour: bool       # the texture's alpha marks where the unit's team colour shows


def read_g3d(data: bytes, name: str = "g3d") -> list[G3DMesh]:
    if len(data) < 7 or data[:3] != b"G3D":
        raise G3DError(f"{name}: not a G3D file")
    if data[3] != 4:
        raise G3DError(f"{name}: G3D version {data[3]} (4 is read)")
    n_meshes = struct.unpack_from("<H", data, 4)[0]
    if not 0 < n_meshes <= 4096:
        raise G3DError(f"{name}: implausible mesh count {n_meshes}")
    ofs, out = 7, []
    for m in range(n_meshes):
        if ofs + _HEADER.size > len(data):
            raise G3DError(f"{name}: mesh {m}'s header runs past the end ({len(data)} bytes)")
        raw, frames, n_v, n_i, *floats, props, tex_flags = _HEADER.unpack_from(data, ofs)
        ofs += _HEADER.size
        if not (0 < frames <= MAX_COUNT and 0 <= n_v <= MAX_COUNT and 0 <= n_i <= MAX_COUNT and n_i % 3 == 0):
            raise G3DError(f"{name}: mesh {m}: implausible counts ({frames} frames, {n_v} vertices, {n_i} indices)")
        paths = []
        for bit in range(5):
            if tex_flags & (1 << bit):
                if ofs + 64 > len(data):
                    raise G3DError(f"{name}: mesh {m}'s texture paths run past the end")
                paths.append((bit, data[ofs:ofs + 64].split(b"\0")[0].decode("latin-1")))
                ofs += 64
        need = frames * n_v * 24 + (n_v * 8 if tex_flags else 0) + n_i * 4
        if ofs + need > len(data):
            raise G3DError(f"{name}: mesh {m}: {frames} frames of {n_v} vertices and {n_i} indices "
                           f"do not fit in {len(data)} bytes")
        verts = np.frombuffer(data, "<f4", n_v * 3, ofs).reshape(n_v, 3).astype(np.float32)
        ofs += frames * n_v * 24                     # every frame's vertices, then every frame's normals
        uv = None
        if tex_flags:
            uv = np.frombuffer(data, "<f4", n_v * 2, ofs).reshape(n_v, 2).astype(np.float32)
            ofs += n_v * 8
        faces = np.frombuffer(data, "<u4", n_i, ofs).reshape(-1, 3).astype(np.int64)
        ofs += n_i * 4
        if len(faces) and (n_v == 0 or faces.max() >= n_v):
            raise G3DError(f"{name}: mesh {m}: a face names vertex {faces.max()} of {n_v}")
        if not np.all(np.isfinite(verts)):
            raise G3DError(f"{name}: mesh {m}: non-finite vertices")
        out.append(G3DMesh(raw.split(b"\0")[0].decode("latin-1"), verts, uv, faces,
                           tuple(float(np.clip(c, 0, 1)) for c in floats[:3]),
                           dict(paths).get(0, ""), bool(props & 1)))
    return out


def write_g3d(meshes: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]], frames: int = 1,
              team_colour: bool = False) -> bytes:
    """A version-4 G3D of (vertices, faces, uv or None, diffuse texture path) meshes, each vertex set
    repeated for ``frames`` frames (for tests and fixtures)."""
    out = [b"G3D\x04", struct.pack("<HB", len(meshes), 0)]
    for i, (v, f, uv, tex) in enumerate(meshes):
        v, f = np.asarray(v, "<f4"), np.asarray(f, "<u4")
        flags = 1 if uv is not None else 0
        out.append(_HEADER.pack(f"mesh{i}".encode(), frames, len(v), f.size, 0.8, 0.5, 0.2, 0, 0, 0, 1, 1, int(team_colour), flags))
        if flags:
            out.append(tex.encode().ljust(64, b"\0"))
        out += [np.tile(v, (frames, 1)).tobytes(), np.zeros((frames * len(v), 3), "<f4").tobytes()]
        if flags:
            out.append(np.asarray(uv, "<f4").tobytes())
        out.append(f.tobytes())
    return b"".join(out)
