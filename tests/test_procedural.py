import json

import numpy as np
import pytest

from core.data.__main__ import main as data_main
from core.data.check import check_dataset
from core.data import io
from core.data.procedural import TEMPLATES, make_object, make_parts, procedural_texture


def _signature(parts):
    return [(p.positions.tobytes(), p.colors.tobytes(), None if p.texture is None else p.texture.tobytes()) for p in parts]


def test_objects_are_a_pure_function_of_seed_and_index():
    a, da = make_parts(7, 3)
    b, db = make_parts(7, 3)
    assert _signature(a) == _signature(b) and da == db
    assert _signature(make_parts(8, 3)[0]) != _signature(a)
    assert _signature(make_parts(7, 4)[0]) != _signature(a)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_builds_a_normalised_object(template):
    asset = make_object(1, 0, template=template)
    pts = np.concatenate([p.positions.reshape(-1, 3) for p in asset.parts])
    lo, hi = pts.min(0), pts.max(0)
    assert np.all(np.isfinite(pts))
    assert np.allclose((lo + hi) / 2, 0, atol=1e-5)  # bounding-box centre at the origin
    assert abs((hi - lo).max() - 1.0) < 1e-5  # largest extent exactly 1
    assert (hi - lo).min() > 0.02  # not flat
    assert asset.normalisation["procedural"]["template"] == template
    for p in asset.parts:
        assert p.normals.shape == p.positions.shape and np.allclose(np.linalg.norm(p.normals, axis=-1), 1, atol=1e-3)
        assert (p.texture is None) == (p.uv is None)


def test_objects_are_diverse():
    descs = [make_parts(0, i)[1] for i in range(40)]
    assert len({d["template"] for d in descs}) >= 6
    materials = [p["material"] for d in descs for p in d["parts"]]
    assert any(m == "solid" for m in materials)
    assert len({m for m in materials if m.startswith("texture:")}) >= 4  # stripes, checker, noise, ...
    assert len({len(d["parts"]) for d in descs}) >= 3
    colours = np.concatenate([p.colors[:, 0, :3] for i in range(10) for p in make_parts(0, i)[0] if p.texture is None])
    assert np.unique(colours.round(2), axis=0).shape[0] >= 5


def test_textures_tile_and_have_two_colours():
    rng = np.random.default_rng(0)
    for kind in ("stripes", "checker", "noise", "dots", "grid", "gradient"):
        img, k = procedural_texture(rng, kind)
        arr = np.asarray(img).astype(int)
        assert k == kind and arr.shape == (64, 64, 3)
        assert arr.std(axis=(0, 1)).max() > 5, kind  # a pattern, not a flat colour
        # periodic: the wrap-around step is no larger than the largest step inside the tile
        inner = np.abs(np.diff(arr, axis=1)).max()
        assert np.abs(arr[:, 0] - arr[:, -1]).max() <= inner + 1, kind


def test_procedural_command_writes_a_valid_split_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = data_main(["procedural", "--out", str(out), "--objects", "6", "--views", "3", "--size", "32",
                    "--workers", "1", "--val-fraction", "0.3", "--seed", "5", "--quiet"])
    assert rc == 0
    assert "6 rendered" in capsys.readouterr().out
    objs = io.list_objects(out)
    assert len(objs) == 6 and {o.parent.name for o in objs} == {"train", "val"}
    rep = check_dataset(out)
    assert rep["problems"] == [] and rep["views"] == 18
    meta = json.loads((objs[0] / "meta.json").read_text())
    assert meta["source"].startswith("procedural:seed=5") and meta["image_size"] == 32 and len(meta["views"]) == 3
    assert np.load(objs[0] / "000_depth.npy").dtype == np.float16
    # a second run resumes: complete objects are not rendered again
    rc = data_main(["procedural", "--out", str(out), "--objects", "6", "--views", "3", "--size", "32",
                    "--workers", "1", "--val-fraction", "0.3", "--seed", "5", "--quiet"])
    assert rc == 0 and "6 already complete" in capsys.readouterr().out
