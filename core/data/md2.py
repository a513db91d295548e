"""A reader of Quake 2's MD2 meshes (ufoai-data's object models), which trimesh and assimp do not read.

Layout (id Software's format, little-endian): a 68-byte header of 17 int32 (``IDP2``, version 8, skin
size, frame size, counts and offsets), skin names (64 bytes each), texture coordinates (2 x int16 in
skin pixels), triangles (3 vertex + 3 texcoord indices, uint16) and frames (scale and translate
float32[3], a 16-byte name, then per vertex 3 quantised uint8 coordinates and a normal index). The
first frame is the rest pose. Quake's frame is +Z up, as ours. Every count and offset is checked
against the file's length before anything is read, so a damaged file is an error, never a hang or an
unbounded allocation.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

HEADER = struct.Struct("<4s16i")
MAX_COUNT = 1 << 20


class MD2Error(ValueError):
    """An MD2 file that cannot be read; says what is wrong with it."""


@dataclass
class MD2Mesh:
    vertices: np.ndarray    # [V, 3] float32, first frame, Quake units
    faces: np.ndarray       # [F, 3] int64, counter-clockwise seen from outside
    uv: np.ndarray          # [F, 3, 2] float32 per corner, OpenGL convention (v up)
    skins: list[str]        # skin paths named in the file (may be empty)


def read_md2(data: bytes, name: str = "md2") -> MD2Mesh:
    if len(data) < HEADER.size:
        raise MD2Error(f"{name}: {len(data)} bytes, shorter than an MD2 header")
    (ident, version, skin_w, skin_h, frame_size, n_skins, n_verts, n_st, n_tris, _n_gl, n_frames,
     ofs_skins, ofs_st, ofs_tris, ofs_frames, _ofs_gl, _ofs_end) = HEADER.unpack_from(data)
    if ident != b"IDP2" or version != 8:
        raise MD2Error(f"{name}: not an MD2 file (magic {ident!r}, version {version})")
    counts = {"skins": n_skins, "vertices": n_verts, "texcoords": n_st, "triangles": n_tris, "frames": n_frames}
    bad = [k for k, v in counts.items() if not 0 <= v <= MAX_COUNT]
    if bad or n_verts == 0 or n_tris == 0 or n_frames == 0:
        raise MD2Error(f"{name}: implausible counts {counts}")
    if skin_w <= 0 or skin_h <= 0:
        skin_w = skin_h = 1  # no skin size: texture coordinates are unusable but geometry is fine
    spans = {"skins": (ofs_skins, 64 * n_skins), "texcoords": (ofs_st, 4 * n_st), "triangles": (ofs_tris, 12 * n_tris),
             "first frame": (ofs_frames, 40 + 4 * n_verts)}
    for what, (ofs, size) in spans.items():
        if ofs < HEADER.size or ofs + size > len(data):
            raise MD2Error(f"{name}: {what} at {ofs}+{size} lie outside the file ({len(data)} bytes)")
    if frame_size < 40 + 4 * n_verts:
        raise MD2Error(f"{name}: frame size {frame_size} too small for {n_verts} vertices")
    skins = [data[ofs_skins + 64 * i: ofs_skins + 64 * (i + 1)].split(b"\0", 1)[0].decode("latin-1")
             for i in range(n_skins)]
    st = np.frombuffer(data, "<i2", 2 * n_st, ofs_st).reshape(-1, 2).astype(np.float32) if n_st else \
        np.zeros((1, 2), np.float32)
    tris = np.frombuffer(data, "<u2", 6 * n_tris, ofs_tris).reshape(-1, 6).astype(np.int64)
    vi, ti = tris[:, :3], tris[:, 3:]
    if vi.max() >= n_verts:
        raise MD2Error(f"{name}: a triangle names vertex {vi.max()} of {n_verts}")
    ti = np.clip(ti, 0, len(st) - 1)
    scale = np.frombuffer(data, "<f4", 3, ofs_frames)
    translate = np.frombuffer(data, "<f4", 3, ofs_frames + 12)
    packed = np.frombuffer(data, np.uint8, 4 * n_verts, ofs_frames + 40).reshape(-1, 4)[:, :3]
    verts = (packed.astype(np.float32) * scale + translate).astype(np.float32)
    if not np.all(np.isfinite(verts)):
        raise MD2Error(f"{name}: non-finite vertices")
    # MD2 triangles are clockwise seen from outside: reverse them
    faces, ti = vi[:, ::-1].copy(), ti[:, ::-1]
    uv = st[ti] / np.array([skin_w, skin_h], np.float32)
    uv[..., 1] = 1.0 - uv[..., 1]
    return MD2Mesh(verts, faces, uv.astype(np.float32), skins)


def write_md2(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None, skin: str = "",
              skin_size: tuple[int, int] = (64, 64)) -> bytes:
    """A one-frame MD2 of ``vertices`` [V,3] and counter-clockwise ``faces`` [F,3] (for tests and
    fixtures; 8-bit quantised like the real files)."""
    v = np.asarray(vertices, np.float32)
    lo, hi = v.min(0), v.max(0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    q = np.clip(np.round((v - lo) / scale), 0, 255).astype(np.uint8)
    F = np.asarray(faces, np.int64)[:, ::-1]                 # stored clockwise
    uvc = np.zeros((len(F), 3, 2), np.float32) if uv is None else np.asarray(uv, np.float32)[:, ::-1]
    sw, sh = skin_size
    st = np.stack([uvc[..., 0] * sw, (1.0 - uvc[..., 1]) * sh], -1).reshape(-1, 2).round().astype("<i2")
    tris = np.concatenate([F, np.arange(3 * len(F)).reshape(-1, 3)], 1).astype("<u2")
    skins = [skin.encode("latin-1").ljust(64, b"\0")] if skin else []
    frame = scale.astype("<f4").tobytes() + lo.astype("<f4").tobytes() + b"frame1".ljust(16, b"\0") + \
        np.concatenate([q, np.zeros((len(q), 1), np.uint8)], 1).tobytes()
    ofs_skins = HEADER.size
    ofs_st = ofs_skins + 64 * len(skins)
    ofs_tris = ofs_st + st.nbytes
    ofs_frames = ofs_tris + tris.nbytes
    ofs_end = ofs_frames + len(frame)
    head = HEADER.pack(b"IDP2", 8, sw, sh, len(frame), len(skins), len(v), len(st), len(F), 0, 1, ofs_skins, ofs_st,
                       ofs_tris, ofs_frames, ofs_end, ofs_end)
    return head + b"".join(skins) + st.tobytes() + tris.tobytes() + frame
