import json

import pytest

from core.data import io
from core.data.check import check_dataset
from core.data.corpus import RenderSettings, assign_splits, build_corpus, procedural_jobs, pybullet_jobs


def test_split_is_by_object_and_stable():
    jobs = assign_splits(procedural_jobs(400), 0.05, seed=0)
    val = {j.name for j in jobs if j.split == "val"}
    assert 5 <= len(val) <= 40  # about 5 %
    more = assign_splits(procedural_jobs(800), 0.05, seed=0)  # adding objects never moves others
    assert {j.name for j in more[:400] if j.split == "val"} == val
    assert {j.name for j in assign_splits(procedural_jobs(400), 0.05, seed=1) if j.split == "val"} != val


def test_pybullet_sources_cover_random_urdfs_and_skip_helpers():
    jobs = pybullet_jobs()
    if not jobs:
        pytest.skip("pybullet_data is not installed")
    paths = [j.path for j in jobs]
    assert sum("random_urdfs" in p for p in paths) == 1000
    for name in ("duck.obj", "soccerball.urdf", "objects/mug.urdf", "lego/lego.urdf", "teddy_vhacd.urdf"):
        assert any(p.endswith(name) for p in paths), name
    assert not any(k in p for p in paths for k in ("plane.urdf", "samurai", "stadium", "_col.obj", "/collision/"))
    assert not any("bunny" in p.lower() for p in paths)     # a Stanford bunny copy: reserved for evaluation
    assert len({j.name for j in jobs}) == len(jobs)


def test_build_corpus_writes_splits_and_report(tmp_path):
    out = tmp_path / "corpus"
    rep = build_corpus(out, procedural=3, pybullet=True, val_fraction=0.5,
                       workers=1, settings=RenderSettings(size=32, views=2), limit_pybullet=2, log=lambda *a: None)
    saved = json.loads((out / "corpus.json").read_text())
    assert saved["counts"] == rep["counts"]
    c = rep["counts"]
    n_pb = 2 if pybullet_jobs() else 0
    assert c["objects"] == 3 + n_pb and c["train"] + c["val"] == c["objects"] and c["images"] == 2 * c["objects"]
    assert c["by_source"]["procedural"] == 3 and rep["size_bytes"] > 0 and rep["seconds"] > 0
    assert len(io.list_objects(out)) == c["objects"]
    assert check_dataset(out)["problems"] == []


def test_colliding_candidate_names_get_their_own_folders():
    """Slugs cut at 80 characters collide (eight KiCad connectors, two Red Eclipse jars): the second of a
    pair used to be skipped as "existing" and counted twice."""
    from core.data.corpus import Job, unique_names
    jobs = unique_names([Job("kicad-long", "source", "/a/x.wrl"), Job("kicad-long", "source", "/b/x.wrl"),
                         Job("other", "source", "/c.wrl")])
    names = [j.name for j in jobs]
    assert names[0] == "kicad-long" and names[1].startswith("kicad-long-") and len(set(names)) == 3
    again = unique_names([Job("kicad-long", "source", "/a/x.wrl"), Job("kicad-long", "source", "/b/x.wrl")])
    assert [j.name for j in again] == names[:2]            # stable: a resumed build finds the same folders
