"""Meshes out of density fields, and their export in the glTF frame of DESIGN.md.

The world frame is +Z up; glTF is +Y up with the viewer's default camera on +Z. Mapping
world ``(x, y, z)`` to glTF ``(y, z, x)`` keeps up as up, puts the input camera's side
(+X) towards the glTF viewer, and is a cyclic permutation, so a proper rotation
(det +1): nothing gets mirrored and triangle winding (hence outward normals) survives.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import trimesh

# Rows map world coordinates to glTF coordinates: gltf = WORLD_TO_GLTF @ world.
WORLD_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


class MeshError(ValueError):
    """No surface at the requested level, or a field/mesh that cannot be meshed or written."""


def marching_cubes(field: np.ndarray, level: float, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (world) and faces of the ``level`` iso-surface of a density grid ``field[x, y, z]``
    spanning ``[lo, hi]^3``, wound so normals point towards lower density (outwards)."""
    from skimage.measure import marching_cubes as _mc

    field = np.asarray(field, dtype=np.float32)
    if field.ndim != 3 or min(field.shape) < 2:
        raise MeshError(f"density grid must be 3-D with at least 2 cells per axis, got shape {field.shape}")
    if not np.isfinite(field).all():
        raise MeshError("density grid contains NaN or inf")
    fmin, fmax = float(field.min()), float(field.max())
    if not fmin < level < fmax:
        raise MeshError(f"marching cubes: level {level:g} yields no surface (density range [{fmin:.3g}, {fmax:.3g}])")
    lo, hi = bounds
    spacing = tuple((hi - lo) / (n - 1) for n in field.shape)
    # with density high inside, skimage's "ascent" winding gives trimesh outward (CCW) faces
    verts, faces, _, _ = _mc(field, level=level, spacing=spacing, gradient_direction="ascent")
    if len(faces) == 0:
        raise MeshError(f"marching cubes: level {level:g} yields no surface")
    return (verts + lo).astype(np.float32), faces.astype(np.int64)


def to_gltf_frame(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of a world-frame mesh in the glTF frame (world (x, y, z) -> glTF (y, z, x)).

    Vertex colours ride along unchanged; the transform is a rotation, so faces keep their
    winding and normals stay outward."""
    T = np.eye(4)
    T[:3, :3] = WORLD_TO_GLTF
    out = mesh.copy()
    out.apply_transform(T)
    return out


def _atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check(mesh) -> None:
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"expected a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise MeshError("mesh has no faces")


def export_glb(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` (world frame, +Z up) as a binary glTF in glTF's +Y-up frame, atomically
    (a crash never leaves half a file where a viewer could pick it up)."""
    _check(mesh)
    data = to_gltf_frame(mesh).export(file_type="glb")
    return _atomic(Path(path), data)


def export_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``.glb`` (glTF frame), or ``.ply`` / ``.obj`` (world frame, +Z up), atomically."""
    _check(mesh)
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".glb":
        return export_glb(mesh, path)
    if ext not in (".ply", ".obj"):
        raise MeshError(f"{path}: unsupported mesh format {ext!r} (use .glb, .ply or .obj)")
    data = mesh.export(file_type=ext[1:])
    return _atomic(path, data if isinstance(data, bytes) else data.encode())
