"""The 3-D guide (core.nvs.guide): the coloured proxy mesh rasterised unlit at a target camera."""
import numpy as np
import pytest
import trimesh

from core import cameras
from core.nvs.guide import Guide


@pytest.fixture(scope="module")
def sphere_guide():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    colours = np.where(mesh.vertices[:, 1:2] > 0, [[255, 0, 0, 255]], [[0, 0, 255, 255]]).astype(np.uint8)
    mesh.visual.vertex_colors = colours            # +y half red, -y half blue
    g = Guide(mesh, 64, fov_deg=40.0)
    yield g
    g.close()


def test_guide_is_unlit_colour_alpha_and_depth_where_the_mesh_is(sphere_guide):
    w2c = cameras.pose_from_spherical(0.0, 0.0, 2.0)   # on +x, looking at the origin
    f = sphere_guide.render(w2c)
    img = np.asarray(f.image).astype(int)
    assert f.alpha[32, 32] == 255 and f.alpha[0, 0] == 0 and (img[0, 0] == 255).all()   # object / white background
    assert abs(f.depth[32, 32] - 1.6) < 0.02                         # 2.0 - radius 0.4 along the axis
    # unlit: the vertex colour itself, the same on the lit and the shadow side of a lit render
    K = cameras.intrinsics(40.0, 64)
    for point, colour in (((0.35, 0.15, 0.0), (255, 0, 0)), ((0.35, -0.15, 0.0), (0, 0, 255))):
        uv, _ = cameras.project(np.array([point]), w2c, K)
        u, v = uv[0]
        assert np.abs(img[int(v), int(u)] - colour).max() <= 2


def test_guide_follows_the_camera_and_refuses_bad_ones(sphere_guide):
    back = sphere_guide.render(cameras.pose_from_spherical(180.0, 0.0, 2.0))
    front = sphere_guide.render(cameras.pose_from_spherical(0.0, 0.0, 2.0))
    # seen from -x, image left/right swap: red (+y) is on the other side
    assert np.asarray(front.image)[32, 20].tolist() != np.asarray(back.image)[32, 20].tolist()
    with pytest.raises(cameras.CameraError, match="guide camera"):
        sphere_guide.render(np.full((3, 4), np.nan))


def test_a_render_from_another_thread_reads_the_same_pixels_and_close_stops_it():
    """The app renders guides from request threads and per-client workers; a GL context is current on
    one thread only, and a render from another once read back the wrong pixels."""
    import threading
    import trimesh as tm
    g = Guide(tm.creation.icosphere(subdivisions=2, radius=0.4), 48)
    w2c = cameras.pose_from_spherical(30.0, 20.0, 2.0)
    here, there = g.render(w2c), {}
    t = threading.Thread(target=lambda: there.update(r=g.render(w2c)))
    t.start()
    t.join()
    assert np.array_equal(np.asarray(here.image), np.asarray(there["r"].image))
    assert np.array_equal(here.alpha, there["r"].alpha) and here.alpha.max() == 255
    g.close()
    with pytest.raises(RuntimeError, match="closed"):
        g.render(w2c)
