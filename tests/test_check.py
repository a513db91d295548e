import numpy as np
import pytest
from PIL import Image

from core import cameras
from core.data import io
from core.data.__main__ import main as data_main
from core.data.check import check_dataset


def _object(folder, n=3, size=16, extras=True):
    for i in range(n):
        img = Image.new("RGB", (size, size), (255, 255, 255))
        img.paste((200, 40, 40), (4, 4, 12, 12))
        alpha = np.zeros((size, size), np.float32)
        alpha[4:12, 4:12] = 1
        io.write_view(folder, i, img, cameras.pose_from_spherical(40 * i, 10, 2.0),
                      alpha=alpha if extras else None, depth=alpha * 1.5 if extras else None)
    if extras:
        io.write_meta(folder, {"fov_deg": 49.1, "image_size": size, "views": [{}] * n})
    return folder


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    for split, names in (("train", ("a", "b")), ("val", ("c",))):
        for n in names:
            _object(root / split / n)
    return root


def _run(capsys, path):
    rc = data_main(["check", str(path)])
    return rc, capsys.readouterr().out


def test_clean_dataset_passes_in_every_layout(dataset, tmp_path, capsys):
    for path in (dataset, dataset / "train", dataset / "train" / "a"):
        rc, out = _run(capsys, path)
        assert rc == 0, out
        assert "check OK" in out
    assert "3 objects, 9 views" in _run(capsys, dataset)[1]
    # plain ArchonView folders (png + npy only) are valid too
    _object(tmp_path / "archon" / "x", extras=False)
    rc, out = _run(capsys, tmp_path / "archon")
    assert rc == 0 and "1 objects, 3 views" in out


def test_every_problem_is_reported_by_file(dataset, capsys):
    a, b, c = dataset / "train" / "a", dataset / "train" / "b", dataset / "val" / "c"
    (a / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt PNG
    (a / "001.npy").unlink()  # missing pose
    np.save(a / "002.npy", np.zeros((3, 3), np.float32))  # wrongly shaped
    R = np.eye(3) * 2  # not a rotation
    np.save(b / "000.npy", np.concatenate([R, [[0], [0], [-2]]], 1).astype(np.float32))
    off = cameras.look_at([2.0, 0, 0], target=[0, 1.0, 0])  # looks past the origin
    np.save(b / "001.npy", off)
    Image.new("L", (8, 8)).save(b / "002_alpha.png")  # alpha of the wrong size
    np.save(c / "000_depth.npy", np.zeros((5, 5), np.float32))  # depth of the wrong shape
    Image.new("RGB", (16, 12), "white").save(c / "001.png")  # not square, size differs
    np.save(c / "007.npy", cameras.pose_from_spherical(0, 0, 2))  # pose without an image
    (c / "meta.json").write_text("{not json")
    rc, out = _run(capsys, dataset)
    assert rc == 1
    expected = {
        "a/000.png": "unreadable image", "a/001.npy": "missing", "a/002.npy": "shape (3, 3)",
        "b/000.npy": "not orthonormal", "b/001.npy": "does not look at the origin",
        "b/002_alpha.png": "differs from the image", "c/000_depth.npy": "shape (5, 5)",
        "c/001.png": "not square", "c/007.npy": "pose without an image", "c/meta.json": "invalid JSON",
    }
    lines = out.splitlines()
    for path, msg in expected.items():
        assert any(path in l and msg in l for l in lines), (path, msg, out)
    assert "check FAILED" in lines[-1] and "problems in 3 objects" in lines[-1]


def test_check_never_raises_on_odd_inputs(tmp_path, capsys):
    rc, out = _run(capsys, tmp_path / "does-not-exist")
    assert rc == 1 and "not a directory" in out
    (tmp_path / "empty").mkdir()
    rc, out = _run(capsys, tmp_path / "empty")
    assert rc == 1 and "no object folders" in out
    obj = _object(tmp_path / "one" / "o", n=1)
    np.save(obj / "000.npy", np.array([["a", "b"]]))  # non-numeric
    (obj / "000_depth.npy").write_bytes(b"nonsense")
    rc, out = _run(capsys, tmp_path / "one")
    assert rc == 1
    assert "000.npy" in out and "000_depth.npy: unreadable" in out and "pairs need at least 2" in out


def test_meta_mismatches(tmp_path, capsys):
    obj = _object(tmp_path / "o", n=2)
    io.write_meta(obj, {"fov_deg": 500, "image_size": 32, "views": [{}]})
    rc, out = _run(capsys, obj)
    assert rc == 1 and "fov_deg 500" in out
    io.write_meta(obj, {"fov_deg": 40, "image_size": 32, "views": [{}]})
    out = _run(capsys, obj)[1]
    assert "image_size 32 but images are 16x16" in out and "lists 1 views, folder has 2" in out
    rep = check_dataset(obj)
    assert rep["objects"] == 1 and len(rep["problems"]) == 2


def test_a_view_whose_mask_shows_nothing_is_flagged(dataset, capsys):
    a = dataset / "train" / "a"
    Image.new("L", (16, 16), 0).save(a / "001_alpha.png")   # the object is gone from view 001
    rc, out = _run(capsys, dataset)
    assert rc == 1
    assert any("a/001_alpha.png" in l and "empty view" in l for l in out.splitlines()), out
    assert "problems in 1 objects" in out.splitlines()[-1]
