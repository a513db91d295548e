"""Real mesh sources (core/data/sources.py) and the MD2 reader, on small fixtures made here (CI does not
install the Debian packages)."""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from core.data import sources
from core.data.md2 import HEADER, MD2Error, read_md2, write_md2
from core.data.render import MeshError, make_asset


def tall_box(extents=(0.4, 0.6, 1.0)) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents)


def corner_uv(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-corner UVs from the x/y of each corner (any distinct values do)."""
    v = mesh.vertices[mesh.faces]
    return ((v[..., :2] - v[..., :2].min((0, 1))) / np.ptp(v[..., :2].reshape(-1, 2), 0)).astype(np.float32)


def png_bytes(color=(200, 30, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- MD2

def test_md2_round_trip_keeps_shape_winding_and_uv():
    box = tall_box()
    uv = corner_uv(box)
    m = read_md2(write_md2(box.vertices, box.faces, uv, skin=".box"))
    assert m.skins == [".box"] and m.faces.shape == box.faces.shape
    assert np.abs(m.vertices - box.vertices).max() < 1.0 / 255 + 1e-6            # 8-bit quantised
    back = trimesh.Trimesh(m.vertices, m.faces, process=False)
    assert back.is_winding_consistent and back.volume > 0                       # counter-clockwise: outward
    assert np.abs(m.uv - uv).max() < 1.0 / 64 + 1e-6                            # skin pixels


@pytest.mark.parametrize("damage", ["short", "magic", "offset", "count", "vertex_index"])
def test_damaged_md2_is_a_clear_error(damage):
    box = tall_box()
    data = bytearray(write_md2(box.vertices, box.faces))
    fields = list(HEADER.unpack_from(data))
    if damage == "short":
        data = data[:40]
    elif damage == "magic":
        data[:4] = b"IDP3"
    elif damage == "offset":
        fields[14] = len(data) + 100          # frames beyond the end of the file
        HEADER.pack_into(data, 0, *fields)
    elif damage == "count":
        fields[8] = 2 ** 30                   # triangles: an allocation no file can back
        HEADER.pack_into(data, 0, *fields)
    else:
        ofs_tris = fields[13]
        struct.pack_into("<H", data, ofs_tris, 60000)
    with pytest.raises(MD2Error):
        read_md2(bytes(data), "x.md2")


# ----------------------------------------------------------------------------- Sweet Home 3D

def sh3f(path, rotation: str = ""):
    """A catalogue zip with one Y-up model (tall along Y) and its MTL colour."""
    box = tall_box((0.4, 1.0, 0.6))                       # tall along the model's +Y
    obj = trimesh.exchange.obj.export_obj(box, include_normals=True)
    props = ("id#1=Test#box\nname#1=Tall box\ncategory#1=Living room\nmodel#1=/test/box/box.obj\n"
             + (f"modelRotation#1={rotation}\n" if rotation else ""))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("PluginFurnitureCatalog.properties", props)
        z.writestr("test/box/box.obj", "mtllib box.mtl\nusemtl red\n" + obj)
        z.writestr("test/box/box.mtl", "newmtl red\nKd 0.8 0.1 0.1\n")
    return path


def test_sweethome3d_catalogue_lists_and_loads_upright(tmp_path):
    sh3f(tmp_path / "Test-CC-0.sh3f")
    (c,) = sources.list_sweethome3d(tmp_path)
    assert c.category == "Living room" and c.member == "test/box/box.obj" and c.licence == "CC0-1.0"
    asset = make_asset(sources.load_sweethome3d(c))
    ext = asset.mesh.extents
    assert ext[2] == pytest.approx(1.0) and ext[2] > ext[0] and ext[2] > ext[1]   # model +Y -> world +Z
    colors = np.concatenate([p.colors.reshape(-1, 4) for p in asset.parts])
    assert colors[:, 0].mean() > 0.6 and colors[:, 1].mean() < 0.3                 # the MTL's red, not grey


def test_sweethome3d_model_rotation_is_applied(tmp_path):
    sh3f(tmp_path / "Rot-CC-0.sh3f", rotation="1 0 0 0 0 -1 0 1 0")             # lays the tall axis along Z
    (c,) = sources.list_sweethome3d(tmp_path)
    ext = make_asset(sources.load_sweethome3d(c)).mesh.extents
    assert ext[2] < 1.0                                                          # no longer tallest along up


# ----------------------------------------------------------------------------- Red Eclipse

def test_redeclipse_prop_takes_the_skin_obj_cfg_names(tmp_path):
    prop = tmp_path / "maker" / "crate"
    prop.mkdir(parents=True)
    box = tall_box((0.5, 1.0, 0.5))
    box.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((len(box.vertices), 2)))
    (prop / "crate.obj").write_text(trimesh.exchange.obj.export_obj(box, include_texture=True))
    (prop / "wood.png").write_bytes(png_bytes((30, 200, 40)))
    (prop / "obj.cfg").write_text('objload crate.obj\nobjskin * "wood.png"\n')
    (c,) = sources.list_redeclipse(tmp_path)
    parts = sources.load_redeclipse(c)
    assert all(p.texture is not None and p.uv is not None for p in parts)
    assert np.asarray(parts[0].texture)[..., 1].mean() > 150                    # the named skin
    (prop / "wood.png").unlink()
    with pytest.raises(MeshError, match="crate.obj: no skin image"):
        sources.load_redeclipse(c)


# ----------------------------------------------------------------------------- UFO:AI

def test_ufoai_md2_loads_textured_from_the_pk3(tmp_path):
    box = tall_box()
    pk3 = tmp_path / "0models.pk3"
    with zipfile.ZipFile(pk3, "w") as z:
        z.writestr("models/objects/barrels/barrel.md2", write_md2(box.vertices, box.faces, corner_uv(box), ".barrel"))
        z.writestr("models/objects/barrels/barrel.png", png_bytes((20, 40, 220), (16, 16)))
        z.writestr("models/objects/barrels/lid.md2", write_md2(box.vertices, box.faces, corner_uv(box), ".nope"))
    cands = {c.name: c for c in sources.list_ufoai(pk3)}
    assert set(cands) == {"ufoai-barrels-barrel", "ufoai-barrels-lid"}
    (part,) = sources.load_ufoai(cands["ufoai-barrels-barrel"])
    assert part.texture is not None and part.uv.shape == (12, 3, 2) and part.positions.shape == (12, 3, 3)
    with pytest.raises(MeshError, match="lid.md2: skin"):
        sources.load_ufoai(cands["ufoai-barrels-lid"])


def test_too_few_faces_is_refused_and_unknown_or_missing_sources_are_named(tmp_path, monkeypatch):
    from core.data.corpus import source_jobs
    src = sources.Source("tiny", "tiny-package", True, tmp_path, lambda: [sources.Candidate("tiny", "t", "x")],
                         lambda c: sources.load_ufoai(c))
    assert src.installed
    missing = sources.Source("gone", "gone-data", True, tmp_path / "nope", lambda: [], lambda c: [])
    with pytest.raises(MeshError, match="apt-get install gone-data"):
        missing.list()
    monkeypatch.setitem(sources.SOURCES, "gone", missing)
    said = []
    assert source_jobs(["gone"], log=said.append) == [] and "apt-get install gone-data" in said[0]
    with pytest.raises(MeshError, match="unknown source"):
        source_jobs(["no-such-source"])


def test_unseen_sources_go_to_val_unseen_only(monkeypatch, tmp_path):
    from core.data.corpus import Job, assign_splits
    jobs = [Job(f"a{i}", "source", source="seen") for i in range(50)] + \
        [Job(f"b{i}", "source", source="held-out") for i in range(10)] + [Job(f"p{i}", "procedural") for i in range(20)]
    assign_splits(jobs, 0.2, 0, ("held-out",))
    assert {j.split for j in jobs if j.source == "held-out"} == {"val_unseen"}
    assert {j.split for j in jobs if j.source != "held-out"} <= {"train", "val"} and any(j.split == "val" for j in jobs)


def test_describe_lists_every_source_with_its_package():
    res = sources.describe()["sources"]
    for name in ("sweethome3d-furniture", "redeclipse-data", "ufoai-data"):
        assert res[name]["package"] == name and res[name]["real"]
        assert res[name]["installed"] == (res[name]["candidates"] is not None)
    assert not res["procedural"]["real"] and not res["pybullet-random-urdfs"]["real"]


# ----------------------------------------------------------------------------- 0 A.D. (PMD)

def test_pmd_round_trip_and_damage():
    from core.data.pmd import PMDError, read_pmd, write_pmd
    box = tall_box()
    uv = np.random.default_rng(0).random((len(box.vertices), 2)).astype(np.float32)
    m = read_pmd(write_pmd(box.vertices, box.faces, uv))
    assert np.allclose(m.vertices, box.vertices) and np.array_equal(m.faces, box.faces) and np.allclose(m.uv, uv)
    data = write_pmd(box.vertices, box.faces)
    for bad in (data[:30], b"PSMX" + data[4:], data[:16] + struct.pack("<I", 2 ** 30) + data[20:]):
        with pytest.raises(PMDError):
            read_pmd(bad, "x.pmd")


def test_zero_ad_mesh_takes_its_actors_texture_and_small_props_are_dropped(tmp_path):
    from core.data.pmd import write_pmd
    box = tall_box((1.0, 3.0, 1.5))                                        # game units, +Y up
    sub = trimesh.creation.icosphere(subdivisions=2, radius=1.5)           # 320 faces: above the decoration filter
    uv = np.random.default_rng(0).random((len(sub.vertices), 2))
    archive = tmp_path / "public.zip"
    dds = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 180, 40)).save(dds, "PNG")              # any image Pillow reads
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("art/meshes/props/urn.dae.cached.pmd", write_pmd(sub.vertices, sub.faces[:, ::-1], uv))
        z.writestr("art/meshes/props/pebble.dae.cached.pmd", write_pmd(box.vertices * 0.1, box.faces[:, ::-1]))
        z.writestr("art/meshes/structural/wall.dae.cached.pmd", write_pmd(box.vertices, box.faces[:, ::-1]))
        z.writestr("art/textures/skins/props/urn.png.cached.dds", dds.getvalue())
        z.writestr("art/actors/props/urn.xml", '<actor><group><variant><mesh>props/urn.dae</mesh><textures>'
                                              '<texture file="props/urn.png" name="baseTex"/></textures></variant>'
                                              '</group></actor>')
    cands = {c.name: c for c in sources.list_zero_ad(archive)}
    assert set(cands) == {"0ad-props-urn", "0ad-props-pebble"}                  # no building parts
    assert cands["0ad-props-urn"].get("texture") == "art/textures/skins/props/urn.png.cached.dds"
    parts = sources.load_zero_ad(cands["0ad-props-urn"])
    mesh = trimesh.Trimesh(parts[0].positions.reshape(-1, 3), np.arange(len(parts[0].positions) * 3).reshape(-1, 3))
    mesh.merge_vertices()
    assert parts[0].texture is not None and mesh.volume > 0                     # textured, faces wound outward
    with pytest.raises(MeshError, match="small decoration"):
        sources.load_zero_ad(cands["0ad-props-pebble"])


def test_contact_sheet_has_a_row_per_source(tmp_path):
    from core.data.__main__ import main as data_main
    from core.data.io import write_meta
    out = tmp_path / "c"
    assert data_main(["procedural", "--out", str(out), "--objects", "3", "--views", "2", "--size", "32",
                      "--workers", "1", "--quiet"]) == 0
    obj = sorted(out.iterdir())[0]
    write_meta(obj, {**__import__("json").loads((obj / "meta.json").read_text()), "kind": "source",
                     "source": "ufoai-data"})
    from core.data.sheet import contact_sheet
    res = contact_sheet(out, tmp_path / "sheet.png", per_source=2, tile=32)
    assert res["sources"] == {"procedural": 2, "ufoai-data": 1}
    assert Image.open(tmp_path / "sheet.png").size == (150 + 2 * 32, 2 * (32 + 14))


def test_the_same_geometry_counts_once(tmp_path):
    from core.data.corpus import claim_geometry
    a = make_asset(sources.parts_from_scene(tall_box()))
    moved = tall_box()
    moved.apply_scale(3.0)
    moved.apply_translation((5, 0, 0))
    b = make_asset(sources.parts_from_scene(moved))                 # same shape, other scale and place
    claim_geometry(tmp_path, a, "sh3d-box")
    claim_geometry(tmp_path, a, "sh3d-box")                          # a rerun of the same object is fine
    with pytest.raises(MeshError, match="the same geometry as sh3d-box"):
        claim_geometry(tmp_path, b, "other-catalogue-box")
    claim_geometry(tmp_path, make_asset(sources.parts_from_scene(tall_box((0.4, 0.6, 0.9)))), "another")


# ----------------------------------------------------------------------------- KiCad (VRML)

WRL = """#VRML V2.0 utf8
Shape { appearance Appearance {material DEF BODY Material { diffuseColor 0.1 0.3 0.8 } } }
Shape { geometry IndexedFaceSet { creaseAngle 0.5 coordIndex [0,1,2,3,-1,4,5,6,-1]
  coord Coordinate { point [0 0 0, 1 0 0, 1 1 0, 0 1 0, 0 0 1, 1 0 1, 0 1 1] } }
  appearance Appearance{material USE BODY } }
"""


def test_kicad_wrl_subset_reads_polygons_and_colours(tmp_path):
    (shape,) = sources.read_kicad_wrl(WRL)
    pts, tris, rgb = shape
    assert pts.shape == (7, 3) and tris.tolist() == [[0, 1, 2], [0, 2, 3], [4, 5, 6]] and rgb == (0.1, 0.3, 0.8)
    with pytest.raises(MeshError, match="names point 9"):
        sources.read_kicad_wrl(WRL.replace("4,5,6,-1", "4,5,9,-1"), "bad.wrl")


def test_electronics_stay_under_a_fifth_of_the_corpus():
    from core.data.corpus import Job, cap_electronics
    kicad = [Job(f"k{i}", "source", source="kicad-packages3d") for i in range(100)]
    kept = cap_electronics(kicad, 40, log=lambda *a: None)        # 40 other objects rendered
    assert len(kept) == 10 and len(kept) / (40 + len(kept)) <= 0.2
    assert kept == cap_electronics(kicad, 40, log=lambda *a: None) and cap_electronics(kicad[:5], 40) == kicad[:5]


HOMEDECOR_LUA = '''
mymod.plain_wood = { name = "wood.png", color = 0xff804020 }
minetest.register_node("mymod:table", {
    description = "Table",
    tiles = { "top.png^[colorize:#00000040", mymod.plain_wood, "nowhere.png" },
    drawtype = "mesh",
    mesh = "table.obj",
})
minetest.register_node("mymod:table_red", { mesh = "table.obj", tiles = { "red.png" } })
'''

TABLE_OBJ = """g top
v 0 0 0
v 1 0 0
v 1 0 1
v 0 0 1
vt 0 0
vt 1 0
vt 1 1
vt 0 1
f 1/1 2/2 3/3 4/4
g legs
usemtl wood
v 0 1 0
v 1 1 0
v 1 1 1
f -3/1 -2/2 -1/3
g legs
usemtl other
f 5/1 6/2 7/3
f 1/1 5/2 6/3
"""


def test_homedecor_meshes_take_the_tiles_their_lua_names(tmp_path):
    from core.data.minetest import read_grouped_obj
    mod = tmp_path / "mods" / "homedecor" / "mymod"
    (mod / "models").mkdir(parents=True)
    (mod / "textures").mkdir()
    (mod / "init.lua").write_text(HOMEDECOR_LUA)
    (mod / "models" / "table.obj").write_text(TABLE_OBJ)
    (mod / "models" / "unused.obj").write_text(TABLE_OBJ)
    Image.new("RGB", (4, 4), (0, 0, 255)).save(mod / "textures" / "top.png")
    game = tmp_path / "games" / "minetest_game" / "mods" / "default" / "textures"
    game.mkdir(parents=True)
    Image.new("RGB", (4, 4), (200, 200, 200)).save(game / "wood.png")  # another package's texture

    buffers = read_grouped_obj(TABLE_OBJ)
    assert [len(p) for p, _ in buffers] == [2, 1, 2]  # top (a quad: 2 triangles), legs+wood, legs+other
    assert buffers[1][0][0].tolist() == [[0, 1, 0], [1, 1, 0], [1, 1, 1]]  # negative indices count back

    root = tmp_path / "mods" / "homedecor"
    cands = sources.list_homedecor(root)
    assert [c.name for c in cands] == ["homedecor-table", "homedecor-unused"]
    parts = sources.load_homedecor(cands[0])          # the first definition of table.obj counts
    assert len(parts) == 3
    assert parts[0].texture is not None and parts[0].texture.getpixel((0, 0))[:3] == (0, 0, 255)
    assert parts[1].texture is not None and np.allclose(parts[1].colors[0, 0, :3], (0x80 / 255, 0x40 / 255, 0x20 / 255))
    assert parts[2].texture is None and np.allclose(parts[2].colors[..., :3], 0.7)   # an image nobody ships: grey
    z = np.concatenate([p.positions.reshape(-1, 3) for p in parts])[:, 2]
    assert z.max() == 1.0  # Y up in the file, +Z up in the world
    with pytest.raises(MeshError, match="no node definition"):
        sources.load_homedecor(cands[1])
    with pytest.raises(MeshError, match="malformed"):
        read_grouped_obj("v 0 0 x\n", "bad.obj")


def _ac3d_grid(n: int = 4, texture: str = "skin.png") -> str:
    """An AC3D file: an n x n grid of quads in the x-y plane (y up in AC3D), textured."""
    verts = [f"{i / n} {j / n} 0" for j in range(n + 1) for i in range(n + 1)]
    surfs = []
    for j in range(n):
        for i in range(n):
            a = j * (n + 1) + i
            quad = (a, a + 1, a + n + 2, a + n + 1)
            refs = "\n".join(f"{v} {(v % (n + 1)) / n} {(v // (n + 1)) / n}" for v in quad)
            surfs.append(f"SURF 0x10\nmat 0\nrefs 4\n{refs}")
    return ("AC3Db\nMATERIAL \"m\" rgb 1 1 1  amb 0.2 0.2 0.2  emis 0 0 0  spec 0 0 0  shi 0  trans 0\n"
            "OBJECT world\nkids 1\nOBJECT poly\nname \"grid\"\n"
            f"texture \"{texture}\"\nnumvert {len(verts)}\n" + "\n".join(verts) +
            f"\nnumsurf {len(surfs)}\n" + "\n".join(surfs) + "\nkids 0\n")


@pytest.mark.skipif(__import__("shutil").which("assimp") is None, reason="needs assimp-utils (CI installs it)")
def test_flightgear_ac3d_converts_through_assimp_with_its_texture(tmp_path):
    root = tmp_path / "Models"
    for cat in ("Maritime", "Weather"):
        (root / cat).mkdir(parents=True)
        (root / cat / "thing.ac").write_text(_ac3d_grid())
        Image.new("RGB", (8, 8), (255, 0, 0)).save(root / cat / "skin.png")
    cands = sources.list_flightgear(root)
    assert [c.category for c in cands] == ["Maritime"]          # clouds and effects are not objects
    parts = sources.load_flightgear(cands[0])
    assert sum(len(p.positions) for p in parts) == 32 and any(p.texture is not None for p in parts)
    pos = np.concatenate([p.positions.reshape(-1, 3) for p in parts])
    assert np.isclose(pos[:, 2].max(), 1.0) and np.allclose(pos[:, 0], 0.0)  # AC3D (x, y, z) -> world (z, x, y): y up is z up
    (root / "Maritime" / "thing.ac").write_text("not an AC3D file")
    with pytest.raises(MeshError, match="thing.ac"):
        sources.load_flightgear(cands[0])


def test_flightgear_ai_lists_each_aircraft_model_and_leaves_out_effects(tmp_path):
    root = tmp_path / "Aircraft"
    for rel in ("A300/Models/A300.ac", "A300/Models/AB6.ac", "A300/Models/lights/RedLight.ac",
                "A300/Models/A300-shadow.ac", "E70/Models/ERJ170-lod.ac", "E70/Models/ERJ170.ac"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(_ac3d_grid())
    cands = sources.list_flightgear_ai(root)
    assert [Path(c.path).relative_to(root).as_posix() for c in cands] == \
        ["A300/Models/A300.ac", "A300/Models/AB6.ac", "E70/Models/ERJ170.ac"]
    assert len({c.name for c in cands}) == 3 and all(c.source == "flightgear-data-ai" for c in cands)
    assert sources.SOURCES["flightgear-data-ai"].loader is sources.load_flightgear
