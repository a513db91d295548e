"""The renderer's outputs pinned against the camera conventions, checked independently:
the written K/w2c re-project the source mesh (rasterised with PIL) onto the written alpha."""
import json
import math

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from core import cameras
from core.data import io
from core.data.__main__ import main as data_main
from core.data.corpus import load_urdf_parts
from core.data.render import MeshError, Renderer, load_asset, load_parts, make_asset, parts_from_trimesh

SIZE = 96


@pytest.fixture(scope="module")
def renderer():
    r = Renderer(SIZE)
    yield r
    r.release()


def _asymmetric_mesh() -> trimesh.Trimesh:
    """A composition with no symmetry (a mirror or a wrong axis changes its silhouette)."""
    body = trimesh.creation.box((0.8, 0.3, 0.5))
    arm = trimesh.creation.cylinder(radius=0.08, height=0.6)
    arm.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
    arm.apply_translation([0.3, 0.3, 0.1])
    head = trimesh.creation.icosphere(subdivisions=2, radius=0.18)
    head.apply_translation([-0.25, -0.05, 0.4])
    foot = trimesh.creation.cone(radius=0.15, height=0.3)
    foot.apply_translation([0.35, -0.1, -0.55])
    return trimesh.util.concatenate([body, arm, head, foot])


def _normalised_vertices(mesh: trimesh.Trimesh) -> np.ndarray:
    lo, hi = mesh.bounds
    return (mesh.vertices - (lo + hi) / 2) / (hi - lo).max()


def _raster(tris_uv: np.ndarray, size: int, ss: int = 4) -> np.ndarray:
    """Coverage of projected triangles, supersampled ``ss`` times, as a float mask."""
    img = Image.new("L", (size * ss, size * ss), 0)
    d = ImageDraw.Draw(img)
    for tri in tris_uv * ss:
        d.polygon([tuple(p) for p in tri], fill=255)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0


def _first_hit(o: np.ndarray, d: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Distance to the nearest triangle along each ray (Moller-Trumbore), inf on a miss."""
    a, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    out = np.full(len(o), np.inf)
    for s in range(0, len(o), 512):
        oo, dd = o[s:s + 512, None], d[s:s + 512, None]
        p = np.cross(dd, e2)
        det = (e1 * p).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            tv = oo - a
            u = (tv * p).sum(-1) * inv
            q = np.cross(tv, e1)
            v = (dd * q).sum(-1) * inv
            t = (e2 * q).sum(-1) * inv
        ok = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
        out[s:s + 512] = np.where(ok, t, np.inf).min(1)
    return out


def test_written_poses_reproject_the_mesh_onto_the_alpha(tmp_path):
    src = tmp_path / "thing.obj"
    mesh = _asymmetric_mesh()
    mesh.export(src)
    out = tmp_path / "out"
    rc = data_main(["render", "--meshes", str(src), "--out", str(out), "--views", "5", "--size", str(SIZE),
                    "--workers", "1", "--seed", "3", "--quiet", "--depth-dtype", "float32"])
    assert rc == 0
    obj = out / "thing"
    meta = json.loads((obj / "meta.json").read_text())
    K = cameras.intrinsics(meta["fov_deg"], meta["image_size"])
    verts = _normalised_vertices(trimesh.load(src, force="mesh"))  # independent of the renderer's code
    ious = []
    for i, spec in enumerate(meta["views"]):
        w2c = np.load(obj / f"{i:03d}.npy")
        assert w2c.shape == (3, 4) and w2c.dtype == np.float32
        assert np.allclose(cameras.spherical_from_pose(w2c)[1:], (spec["elevation_deg"], spec["radius"]), atol=1e-3)
        uv, depth = cameras.project(verts, w2c, K)
        assert (depth > 0).all()
        cover = _raster(uv[mesh.faces], SIZE) > 0.5
        alpha = np.asarray(Image.open(obj / f"{i:03d}_alpha.png")) > 127
        ious.append((cover & alpha).sum() / (cover | alpha).sum())
        d = np.load(obj / f"{i:03d}_depth.npy")
        assert (d[~alpha] < 1e-6).mean() > 0.99
        if i < 2:  # depth equals a ray cast through the pixel centres (fully covered pixels)
            full = np.asarray(Image.open(obj / f"{i:03d}_alpha.png")) == 255
            o, dirs = cameras.get_rays(w2c, K, SIZE)
            t = _first_hit(o.numpy()[full], dirs.numpy()[full], verts[mesh.faces])
            ref = t * (dirs.numpy()[full] @ -w2c[2, :3])  # distance along the viewing direction
            err = np.abs(d[full] - ref)[np.isfinite(ref)]
            assert np.isfinite(ref).mean() > 0.99 and np.median(err) < 0.005 and (err < 0.02).mean() > 0.98
    assert min(ious) > 0.95, ious
    # mesh.ply is the normalised mesh in the same world frame
    ply = trimesh.load(obj / "mesh.ply", force="mesh")
    assert np.allclose(ply.bounds, [verts.min(0), verts.max(0)], atol=1e-5)
    assert abs((ply.bounds[1] - ply.bounds[0]).max() - 1.0) < 1e-6


def test_a_mirrored_pose_would_fail_the_reprojection(renderer):
    """The IoU check above can fail: mirroring the projection drops it well below 0.95."""
    mesh = _asymmetric_mesh()
    asset = make_asset(parts_from_trimesh(mesh))
    renderer.set_asset(asset)
    w2c = cameras.pose_from_spherical(30, 20, 1.8)
    alpha = renderer.render(w2c).alpha > 127
    uv, _ = cameras.project(_normalised_vertices(mesh), w2c, cameras.intrinsics(cameras.DEFAULT_FOV_DEG, SIZE))
    uv[:, 0] = SIZE - uv[:, 0]
    cover = _raster(uv[mesh.faces], SIZE) > 0.5
    assert (cover & alpha).sum() / (cover | alpha).sum() < 0.9


def _marker_scene():
    """A wide slab at the bottom, a small ball on top, a small cube towards +Y."""
    slab = trimesh.creation.box((1.0, 0.6, 0.2))
    slab.apply_translation([0, 0, -0.4])
    ball = trimesh.creation.icosphere(radius=0.12)
    ball.apply_translation([0, 0, 0.38])
    side = trimesh.creation.box((0.15, 0.15, 0.15))
    side.apply_translation([0, 0.42, -0.2])
    return trimesh.util.concatenate([slab, ball, side])


def test_up_is_up_and_plus_y_is_right_from_plus_x(renderer):
    mesh = _marker_scene()
    asset = make_asset(parts_from_trimesh(mesh))
    renderer.set_asset(asset)
    res = renderer.render(cameras.pose_from_spherical(0, 0, 2.0))  # camera on +X looking at -X
    a = res.alpha > 127
    rows = np.where(a.any(1))[0]
    top, bottom = a[: SIZE // 2], a[SIZE // 2:]
    assert top.sum(1).max() < bottom.sum(1).max() / 2  # the narrow ball is above the centre
    assert rows.min() < SIZE // 2 - 10
    # the side cube (world y ~ +0.33 after centring, z = -0.2) is the only thing in its rows; a pinhole
    # at distance 2 puts z = -0.2 at v = H/2 + f * 0.2 / 2 and +Y on the right of the image
    f = 0.5 * SIZE / math.tan(math.radians(cameras.DEFAULT_FOV_DEG) / 2)
    row = int(SIZE / 2 + f * 0.2 / 2.0)
    cols = np.where(a[row])[0]
    assert cols.size > 3 and cols.min() > SIZE / 2 + 5


def test_white_background_depth_and_sphere_distance(renderer):
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    sphere.visual.vertex_colors = [30, 160, 40, 255]
    asset = make_asset(parts_from_trimesh(sphere))  # radius 0.5 after normalisation
    renderer.set_asset(asset)
    for az, el, r in ((0, 0, 2.0), (123, 35, 1.6), (250, -10, 2.2)):
        res = renderer.render(cameras.pose_from_spherical(az, el, r))
        rgb = np.asarray(res.image)
        assert res.image.mode == "RGB" and res.image.size == (SIZE, SIZE)
        assert (rgb[res.alpha == 0] == 255).all()  # RGB on white outside the object
        c = SIZE // 2
        assert abs(res.depth[c, c] - (r - 0.5)) < 0.01  # nearest surface point along the axis
        assert res.depth[0, 0] == 0 and res.alpha[c, c] == 255
        # the silhouette radius matches the projection of a sphere of radius 0.5
        f = cameras.intrinsics(cameras.DEFAULT_FOV_DEG, SIZE)[0, 0]
        expected_area = math.pi * (f * math.tan(math.asin(0.5 / r))) ** 2
        assert abs(res.alpha.sum() / 255 - expected_area) / expected_area < 0.03
        # vertex colours render: green dominates inside
        inside = rgb[res.alpha == 255].astype(int)
        assert (inside[:, 1] > inside[:, 0] + 40).mean() > 0.95
    # anti-aliased: partial coverage values exist on the silhouette
    assert ((res.alpha > 0) & (res.alpha < 255)).sum() > 20


def test_textured_glb_is_y_up_and_textures_render(tmp_path, renderer):
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:, :4] = (220, 20, 20)
    tex[:, 4:] = (20, 20, 220)
    box = trimesh.creation.box((0.2, 1.0, 0.4))  # tall along glTF +Y
    uv = np.stack([(box.vertices[:, 0] > 0) * 0.5 + 0.25, (box.vertices[:, 1] > 0) * 0.5 + 0.25], 1)
    mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(tex), baseColorFactor=[255] * 4)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    path = tmp_path / "tall.glb"
    box.export(path)
    parts = load_parts(path)
    pts = np.concatenate([p.positions.reshape(-1, 3) for p in parts])
    ext = pts.max(0) - pts.min(0)
    assert np.allclose(ext, [0.4, 0.2, 1.0], atol=1e-5)  # glTF (a,b,c) -> world (c,a,b): Y becomes Z
    assert parts[0].texture is not None and parts[0].uv is not None
    renderer.set_asset(load_asset(path))
    rgb = np.asarray(renderer.render(cameras.pose_from_spherical(45, 20, 1.8)).image).astype(int)
    red = (rgb[..., 0] > rgb[..., 2] + 60).sum()
    blue = (rgb[..., 2] > rgb[..., 0] + 60).sum()
    assert red > 30 and blue > 30


def test_plain_material_colour_renders(renderer):
    box = trimesh.creation.box((1, 1, 1))
    box.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.SimpleMaterial(diffuse=[230, 200, 20, 255]))
    renderer.set_asset(make_asset(parts_from_trimesh(box)))
    res = renderer.render(cameras.pose_from_spherical(20, 30, 2.0))
    inside = np.asarray(res.image)[res.alpha == 255].astype(int)
    assert len(inside) > 500
    assert ((inside[:, 0] > inside[:, 2] + 60) & (inside[:, 1] > inside[:, 2] + 60)).mean() > 0.95  # yellow


def test_lighting_is_fixed_in_the_world(renderer):
    """A surface point keeps its colour from every side (lights do not follow the camera)."""
    renderer.set_asset(make_asset(parts_from_trimesh(trimesh.creation.box((1, 1, 1)))))
    # the +Z face (the top) seen from two azimuths: identical shade
    a = np.asarray(renderer.render(cameras.pose_from_spherical(0, 60, 2.0)).image)
    b = np.asarray(renderer.render(cameras.pose_from_spherical(180, 60, 2.0)).image)
    c = SIZE // 2
    assert np.abs(a[c - 8, c].astype(int) - b[c - 8, c].astype(int)).max() <= 2


def test_bad_meshes_are_reported_and_skipped(tmp_path, capsys):
    good = tmp_path / "good.ply"
    trimesh.creation.icosphere(subdivisions=1).export(good)
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"not a glb at all")
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    with pytest.raises(MeshError, match="broken.glb"):
        load_asset(bad)
    with pytest.raises(MeshError, match="empty.obj"):
        load_asset(empty)
    with pytest.raises(MeshError, match="missing"):
        load_asset(tmp_path / "nope.obj")
    out = tmp_path / "out"
    rc = data_main(["render", "--meshes", str(tmp_path / "*.*"), "--out", str(out), "--views", "2", "--size", "32",
                    "--workers", "1", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "broken.glb" in text and "empty.obj" in text and "1 rendered" in text and "2 failed" in text
    assert [p.name for p in io.list_objects(out)] == ["good"]
    assert not (out / "broken").exists()


def test_urdf_joint_chain_scale_and_colour(tmp_path):
    (tmp_path / "part.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "robot.urdf").write_text("""<robot name="r">
      <material name="red"><color rgba="1 0 0 1"/></material>
      <link name="base"><visual><geometry><box size="1 1 0.2"/></geometry><material name="red"/></visual></link>
      <link name="arm"><visual><origin xyz="0 0 0.5" rpy="0 0 0"/>
        <geometry><mesh filename="part.obj" scale="2 2 2"/></geometry>
        <material name="g"><color rgba="0 1 0 1"/></material></visual></link>
      <joint name="j" type="revolute"><parent link="base"/><child link="arm"/>
        <origin xyz="0 0 1" rpy="0 0 1.5707963"/></joint>
    </robot>""")
    parts = load_urdf_parts(tmp_path / "robot.urdf")
    assert len(parts) == 2
    base, arm = parts
    assert np.allclose(base.colors[..., :3], [1, 0, 0]) and np.allclose(arm.colors[..., :3], [0, 1, 0])
    # the triangle (0,0,0),(2,0,0),(0,2,0) rotated 90 deg about Z and lifted by 1 + 0.5
    assert np.allclose(arm.positions[0], [[0, 0, 1.5], [0, 2, 1.5], [-2, 0, 1.5]], atol=1e-5)


def test_random_lighting_changes_shading_not_coverage_and_is_recorded(tmp_path, renderer):
    """The corpus v2 rig: per object, fixed for all its views; shading changes, the silhouette does not."""
    from core.data.render import Lighting, random_lighting
    box = trimesh.creation.box(extents=(0.6, 0.5, 1.0))
    renderer.set_asset(make_asset(parts_from_trimesh(box)))
    w2c = cameras.pose_from_spherical(30, 20, 2.0)
    renderer.set_lighting(Lighting())
    a = renderer.render(w2c)
    rigs = [random_lighting(np.random.default_rng(s)) for s in range(3)]
    outs = []
    for rig in rigs:
        renderer.set_lighting(rig)
        outs.append(renderer.render(w2c))
    renderer.set_lighting(Lighting())
    on = a.alpha == 255
    coverage = [float((o.alpha != a.alpha).mean()) for o in outs]
    shading = [float(np.abs(np.asarray(o.image, float)[on] - np.asarray(a.image, float)[on]).mean()) for o in outs]
    assert on.sum() > 100 and max(coverage) < 0.01, coverage      # the silhouette does not move
    assert min(shading) > 2.0, shading                              # the shading does
    assert len({json.dumps(r.to_dict()) for r in rigs}) == 3
    rc = data_main(["procedural", "--out", str(tmp_path / "p"), "--objects", "1", "--views", "2", "--size", "32",
                    "--lighting", "random", "--workers", "1", "--quiet"])
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "p").rglob("meta.json")]
    assert rc == 0 and set(meta["lighting"]) == {"directions", "intensities", "ambient", "tint"}


def test_an_object_one_of_whose_views_shows_nothing_is_refused(tmp_path, renderer):
    """A flat sheet seen exactly edge-on renders no pixel: the object is refused (and its folder
    left incomplete, without meta.json), since the models lift and pair every view."""
    from core.data.render import write_object
    sheet = trimesh.Trimesh([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], [[0, 1, 2], [0, 2, 3]])
    asset = make_asset(parts_from_trimesh(sheet), source="sheet")
    with pytest.raises(MeshError, match="view 001 shows no object"):
        write_object(renderer, asset, tmp_path / "sheet", [(0.0, 40.0, 2.0), (0.0, 0.0, 2.0)], write_mesh=False)
    assert not (tmp_path / "sheet" / "meta.json").exists()
    write_object(renderer, asset, tmp_path / "seen", [(0.0, 40.0, 2.0), (90.0, 60.0, 2.0)], write_mesh=False)
    assert (tmp_path / "seen" / "meta.json").is_file()
