"""GLB orientation and marching cubes, on meshes built with trimesh (no network involved)."""
import numpy as np
import pytest
import trimesh

from core.mesh import MeshError, WORLD_TO_GLTF, export_glb, export_mesh, marching_cubes, to_gltf_frame

RED, BLUE, GREY = (255, 0, 0, 255), (0, 0, 255, 255), (128, 128, 128, 255)


def asymmetric_object() -> trimesh.Trimesh:
    """A grey sphere with a red bump on +X (the input camera's side) and a blue bump on +Z (up)."""
    body = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    bump_x = trimesh.creation.box(extents=(0.2, 0.1, 0.1))
    bump_x.apply_translation((0.35, 0, 0))
    bump_z = trimesh.creation.box(extents=(0.1, 0.1, 0.3))
    bump_z.apply_translation((0, 0, 0.4))
    for m, c in ((body, GREY), (bump_x, RED), (bump_z, BLUE)):
        m.visual.vertex_colors = np.tile(c, (len(m.vertices), 1))
    return trimesh.util.concatenate([body, bump_x, bump_z])


def _reload(path) -> trimesh.Trimesh:
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_geometry() if hasattr(loaded, "to_geometry") else loaded.dump(concatenate=True)
    return loaded


def _centroid_of(mesh, colour):
    c = np.asarray(mesh.visual.vertex_colors)[:, :3]
    sel = np.all(c == np.asarray(colour[:3]), axis=1)
    assert sel.any(), f"colour {colour} lost"
    return mesh.vertices[sel].mean(0)


def test_glb_orientation_colours_and_handedness(tmp_path):
    mesh = asymmetric_object()
    path = export_glb(mesh, tmp_path / "obj.glb")
    back = _reload(path)
    assert len(back.vertices) == len(mesh.vertices)
    # up (+Z world, the blue bump) is +Y in glTF; the input side (+X world, red bump) faces +Z
    up, front = _centroid_of(back, BLUE), _centroid_of(back, RED)
    assert np.argmax(up) == 1 and up[1] > 0.3
    assert np.argmax(front) == 2 and front[2] > 0.3
    # a rotation, not a mirror: determinant +1, and the signed volume stays positive (outward normals)
    assert np.isclose(np.linalg.det(WORLD_TO_GLTF), 1.0)
    assert back.volume > 0 and np.isclose(back.volume, mesh.volume, rtol=1e-4)
    # normals point away from the body's centre
    centre = back.vertices.mean(0)
    assert np.mean(np.sum((back.triangles_center - centre) * back.face_normals, axis=1) > 0) > 0.9
    # vertex mapping is exactly world (x, y, z) -> glTF (y, z, x)
    np.testing.assert_allclose(back.vertices, mesh.vertices[:, [1, 2, 0]], atol=1e-6)


def test_to_gltf_frame_is_a_copy():
    mesh = asymmetric_object()
    before = mesh.vertices.copy()
    out = to_gltf_frame(mesh)
    np.testing.assert_array_equal(mesh.vertices, before)
    np.testing.assert_allclose(out.vertices, before[:, [1, 2, 0]], atol=1e-9)


def test_export_is_atomic_and_checks_input(tmp_path):
    with pytest.raises(MeshError):
        export_glb("not a mesh", tmp_path / "x.glb")
    with pytest.raises(MeshError):
        export_mesh(asymmetric_object(), tmp_path / "x.stl")
    export_mesh(asymmetric_object(), tmp_path / "x.ply")
    assert _reload(tmp_path / "x.ply").vertices.shape[1] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_marching_cubes_sphere_outward_and_placed():
    g = np.linspace(-0.6, 0.6, 48)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    field = 20.0 * np.clip(0.4 - np.sqrt((X - 0.1) ** 2 + Y ** 2 + Z ** 2), 0, None) * 10
    v, f = marching_cubes(field, 10.0, (-0.6, 0.6))
    m = trimesh.Trimesh(v, f)
    assert m.is_watertight and m.volume > 0  # outward winding
    np.testing.assert_allclose(m.bounds.mean(0), [0.1, 0, 0], atol=0.02)  # [x, y, z] indexing kept


def test_marching_cubes_no_surface_is_a_clear_error():
    with pytest.raises(MeshError, match="no surface"):
        marching_cubes(np.zeros((8, 8, 8)), 1.0, (-1, 1))
    with pytest.raises(MeshError, match="NaN"):
        marching_cubes(np.full((8, 8, 8), np.nan), 1.0, (-1, 1))
    with pytest.raises(ValueError):
        marching_cubes(np.zeros((8, 8)), 1.0, (-1, 1))
