"""`python -m core.photo`: the app's two actions from the command line, on the shipped checkpoints."""
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from core import photo

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "render_car.png")
# the photo's assumed elevation is the shipped reconstruction model's, and it names the files
EL = json.loads((ROOT / "checkpoints" / "recon" / "config.json").read_text())["default_elevation_deg"]


def run(capsys, *argv):
    rc = photo.main(list(argv))
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


def test_views_write_every_frame_and_repeat_with_the_seed(tmp_path, capsys):
    rc, res, _ = run(capsys, "views", PHOTO, "--out", str(tmp_path / "a"), "--azimuth", "90", "--previews", "--quiet")
    assert rc == 0 and res["n_views"] == 1
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(res["files"]) and len(files) == 1 + 10            # input + 9 previews + final
    final = np.asarray(Image.open(tmp_path / "a" / f"view_az90_el{EL:g}_r2.png"))
    assert final.shape == (128, 128, 3) and final.std() > 5
    rc, res, _ = run(capsys, "views", PHOTO, "--out", str(tmp_path / "b"), "--azimuth", "90", "-160", "--seed", "0")
    assert rc == 0 and res["files"] == ["input.png", f"view_az90_el{EL:g}_r2.png", f"view_az-160_el{EL:g}_r2.png"]
    run(capsys, "views", PHOTO, "--out", str(tmp_path / "c"), "--azimuth", "90", "--previews", "--quiet")
    again = np.asarray(Image.open(tmp_path / "c" / f"view_az90_el{EL:g}_r2.png"))
    assert np.array_equal(final, again)                                     # same seed, same view
    run(capsys, "views", PHOTO, "--out", str(tmp_path / "d"), "--azimuth", "90", "--seed", "1")
    assert not np.array_equal(final, np.asarray(Image.open(tmp_path / "d" / f"view_az90_el{EL:g}_r2.png")))
    rc, res, _ = run(capsys, "views", PHOTO, "--out", str(tmp_path / "e"), "--azimuth", "90", "--samples", "2")
    mean = np.asarray(Image.open(tmp_path / "e" / f"view_az90_el{EL:g}_r2.png")).astype(float)
    expect = (final.astype(float) + np.asarray(Image.open(tmp_path / "d" / f"view_az90_el{EL:g}_r2.png"))) / 2
    assert rc == 0 and res["samples"] == 2 and np.abs(mean - expect).max() <= 1   # seeds 0 and 1, averaged


def test_lift_writes_a_mesh_from_the_photo_and_generated_views(tmp_path, capsys):
    rc, res, _ = run(capsys, "lift", PHOTO, "--out", str(tmp_path / "car.glb"), "--with-views", "2",
                     "--mesh-resolution", "48")
    assert rc == 0 and res["input_views"] == 3
    mesh = trimesh.load(tmp_path / "car.glb", force="mesh")
    assert len(mesh.vertices) == res["vertices"] > 100
    ext = mesh.bounds[1] - mesh.bounds[0]
    assert 0.2 < ext.max() < 1.5                                            # an object of extent ~1, not a box


@pytest.mark.parametrize("argv, out_name, says", [
    (["views", PHOTO, "--distance", "50"], "views", "distance must be a number in [1.2, 4]"),
    (["views", PHOTO, "--elevation", "95"], "views", "elevation must be a number in [-60, 80]"),
    (["views", PHOTO, "--azimuth", "240"], "views", "azimuth must be a number in [-180, 180]"),
    (["views", PHOTO, "--azimuth", "30", "1e308"], "views", "azimuth must be"),
    (["views", PHOTO, "--input-elevation", "1e9"], "views", "input elevation must be"),
    (["views", PHOTO, "--input-distance", "0.5"], "views", "input distance must be a number in [1.2, 4]"),
    (["views", PHOTO, "--samples", "17"], "views", "samples must be an integer in [1, 16]"),
    (["views", PHOTO, "--cfg", "1e6"], "views", "cfg must be a number in [0, 10]"),
    (["views", PHOTO, "--top-p", "2"], "views", "top_p must be"),
    (["views", PHOTO, "--seed", "-1"], "views", "seed must be"),
    (["views", PHOTO, "--foreground-ratio", "2"], "views", "foreground ratio must be"),
    (["views", "/dev/zero"], "views", "not a regular file"),
    (["views", str(ROOT / "README.md")], "views", "not an image"),
    (["views", str(ROOT / "no-such-photo.png")], "views", "no such file"),
    (["views", PHOTO, "--input-elevation", "nan"], "views", "input elevation must be"),
    (["views", PHOTO, "--samples", "0"], "views", "samples must be"),
    (["views", PHOTO, "--cfg", "-1"], "views", "cfg must be"),
    (["lift", PHOTO, "--with-views", "9"], "x.glb", "--with-views"),
    (["lift", PHOTO], "x.stl", "use a .glb"),
    (["views", str(ROOT / "core")], "views", "is a folder, not an image"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, out_name, says):
    rc, _, err = run(capsys, *argv, "--out", str(tmp_path / "out" / out_name))
    assert rc == 2 and err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """An --out that cannot be written is refused in one line naming the user's path, before a model loads."""
    import core.photo
    monkeypatch.setattr(core.photo, "load_nvs", lambda *a: pytest.fail("a model loaded before --out was checked"))
    (tmp_path / "taken").write_text("a file")
    for argv, says in ((["views", PHOTO, "--out", str(tmp_path / "taken")], "exists and is not a folder"),
                       (["views", PHOTO, "--out", str(tmp_path / "taken" / "views")], "is a file, not a folder"),
                       (["views", PHOTO, "--out", "/proc/vantage-views"], "cannot write in /proc"),
                       (["lift", PHOTO, "--out", str(tmp_path)], "is a folder"),
                       (["lift", PHOTO, "--out", "/proc/vantage/x.glb"], "cannot write in /proc")):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and err.startswith("error: --out ") and says in err and len(err.strip().splitlines()) == 1
        assert ".tmp" not in err and "probe" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("size", [(40000, 1), (8000, 1)])
def test_long_thin_photo_is_one_error_line(tmp_path, capsys, size):
    Image.new("RGB", size, (200, 40, 40)).save(tmp_path / "thin.png")
    rc, _, err = run(capsys, "views", str(tmp_path / "thin.png"), "--out", str(tmp_path / "out"))
    assert rc == 2 and err.startswith("error: ") and "longer than wide" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
