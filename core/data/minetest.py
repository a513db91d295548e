"""Minetest's homedecor mod: OBJ meshes whose textures are assigned in Lua, not in an MTL.

A node definition in the mod's ``*.lua`` files names its mesh (``mesh = "x.obj"``) and, in the
same table, a ``tiles = {...}`` list: one texture per mesh buffer, in the order the buffers first
appear in the OBJ (a buffer per ``g``/``o`` group and ``usemtl``; the last tile repeats when there
are fewer tiles than buffers, as the engine does). A tile is a string (``"a.png^overlay"``: the
first image is the base), a table (``{name = "a.png", color = 0xAARRGGBB}``: the image tinted by
the colour), or a name assigned elsewhere in the mod (``homedecor.plain_wood``). trimesh merges an
OBJ's groups, so ``read_grouped_obj`` keeps them apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_MESH = re.compile(r'\bmesh\s*=\s*"([^"]+\.obj)"')
_IMAGE = re.compile(r"[\w.\-]+\.png")
_ASSIGN = re.compile(r"^\s*(?:local\s+)?([\w.]+)\s*=\s*(\{[^{}]*\}|\"[^\"]*\")", re.M)
_COLOR = re.compile(r"color\s*=\s*(0x[0-9a-fA-F]{6,8}|\"#?[0-9a-fA-F]{6}\")")


@dataclass(frozen=True)
class Tile:
    image: str | None               # base image file name, None when the tile names none
    tint: tuple | None = None       # (r, g, b) in [0, 1] multiplied into the image


def _balanced(text: str, open_at: int) -> int:
    """Index just past the brace that closes the one at ``open_at`` (strings skipped)."""
    depth, i, n = 0, open_at, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i = text.find('"', i + 1)
            if i < 0:
                return n
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _enclosing_table(text: str, at: int) -> str:
    """The innermost ``{...}`` around position ``at``."""
    depth = 0
    for i in range(at, -1, -1):
        if text[i] == "}":
            depth += 1
        elif text[i] == "{":
            if depth == 0:
                return text[i:_balanced(text, i)]
            depth -= 1
    return text


def _split_top(body: str) -> list[str]:
    """Comma-separated entries of a table body, nested tables and strings kept whole."""
    out, depth, cur, in_str = [], 0, [], False
    for ch in body:
        if ch == '"':
            in_str = not in_str
        elif not in_str and ch in "{(":
            depth += 1
        elif not in_str and ch in "})":
            depth -= 1
        if ch == "," and depth == 0 and not in_str:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _tint(text: str) -> tuple | None:
    m = _COLOR.search(text)
    if not m:
        return None
    v = m.group(1).strip('"#')
    v = v[2:] if v.startswith("0x") else v
    rgb = int(v[-6:], 16)
    return ((rgb >> 16) & 255) / 255, ((rgb >> 8) & 255) / 255, (rgb & 255) / 255


def _tile(entry: str, names: dict[str, str]) -> Tile:
    entry = entry.strip()
    if entry in names:  # a name assigned elsewhere in the mod
        entry = names[entry]
    img = _IMAGE.search(entry)
    return Tile(img.group(0) if img else None, _tint(entry) if entry.startswith("{") else None)


def mesh_tiles(root: Path) -> dict[str, list[Tile]]:
    """``{obj file name: tiles}`` from the first node definition of each mesh in the mod's Lua."""
    files = sorted(root.rglob("*.lua"))
    texts = [p.read_text(errors="replace") for p in files]
    names = {m.group(1): m.group(2) for t in texts for m in _ASSIGN.finditer(t)}
    out: dict[str, list[Tile]] = {}
    for text in texts:
        for m in _MESH.finditer(text):
            if m.group(1) in out:
                continue
            table = _enclosing_table(text, m.start())
            t = re.search(r"\btiles\s*=\s*\{", table)
            if not t:
                continue
            start = t.end() - 1
            body = table[start + 1:_balanced(table, start) - 1]
            out[m.group(1)] = [_tile(e, names) for e in _split_top(body) if e]
    return out


def read_grouped_obj(text: str, name: str = "obj") -> list[tuple[np.ndarray, np.ndarray]]:
    """Triangles of an OBJ per buffer (a new one at each new ``g``/``o`` + ``usemtl`` combination),
    in order of first appearance: ``[(positions [F,3,3], uv [F,3,2] or None), ...]``."""
    from core.data.render import MeshError
    v, vt = [], []
    buffers: dict[tuple, list] = {}
    group = mtl = ""
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        try:
            if key == "v":
                v.append([float(x) for x in parts[1:4]])
            elif key == "vt":
                vt.append([float(x) for x in parts[1:3]])
            elif key in ("g", "o"):
                group = " ".join(parts[1:])
            elif key == "usemtl":
                mtl = " ".join(parts[1:])
            elif key == "f":
                idx = [p.split("/") for p in parts[1:]]
                vi = [int(i[0]) for i in idx]
                ti = [int(i[1]) if len(i) > 1 and i[1] else 0 for i in idx]
                vi = [i - 1 if i > 0 else len(v) + i for i in vi]
                ti = [i - 1 if i > 0 else (len(vt) + i if i < 0 else -1) for i in ti]
                buf = buffers.setdefault((group, mtl), [])
                for k in range(1, len(vi) - 1):  # fan triangulation
                    buf.append(((vi[0], vi[k], vi[k + 1]), (ti[0], ti[k], ti[k + 1])))
        except (ValueError, IndexError):
            raise MeshError(f"{name}: malformed line {line[:60]!r}") from None
    V, T = np.asarray(v, np.float32).reshape(-1, 3), np.asarray(vt, np.float32).reshape(-1, 2)
    out = []
    for tris in buffers.values():
        fi = np.asarray([t[0] for t in tris])
        ti = np.asarray([t[1] for t in tris])
        if fi.min() < 0 or fi.max() >= len(V):
            raise MeshError(f"{name}: a face indexes a vertex that does not exist")
        uv = T[ti] if len(T) and ti.min() >= 0 and ti.max() < len(T) else None
        out.append((V[fi], uv))
    return out
