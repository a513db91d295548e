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
        for stem in ("kart_house", "kart_house_foundation", "found_4x4", "kart_temple_roof"):
            z.writestr(f"art/meshes/structural/{stem}.dae.cached.pmd", write_pmd(box.vertices, box.faces[:, ::-1]))
        z.writestr("art/actors/structures/kart/house.xml",       # a building's body, its foundation, its roof
                   '<actor><group><variant><mesh>structural/kart_house.dae</mesh></variant>'
                   '<variant><mesh>structural/kart_house_foundation.dae</mesh></variant>'
                   '<variant><mesh>structural/found_4x4.dae</mesh></variant>'
                   '<variant><mesh>structural/kart_temple_roof.dae</mesh></variant></group></actor>')
    cands = {c.name: c for c in sources.list_zero_ad(archive)}
    assert set(cands) == {"0ad-props-urn", "0ad-props-pebble", "0ad-structural-kart-house"}  # no building parts
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
    parts = sources.load_ac3d(cands[0])
    assert sum(len(p.positions) for p in parts) == 32 and any(p.texture is not None for p in parts)
    pos = np.concatenate([p.positions.reshape(-1, 3) for p in parts])
    assert np.isclose(pos[:, 2].max(), 1.0) and np.allclose(pos[:, 0], 0.0)  # AC3D (x, y, z) -> world (z, x, y): y up is z up
    (root / "Maritime" / "thing.ac").write_text("not an AC3D file")
    with pytest.raises(MeshError, match="thing.ac"):
        sources.load_ac3d(cands[0])


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
    assert sources.SOURCES["flightgear-data-ai"].loader is sources.load_ac3d


def test_flightgear_scenery_lists_objects_once_and_leaves_out_effects(tmp_path):
    models, scenery = tmp_path / "Models", tmp_path / "Scenery" / "Models"
    for rel in ("Airport/Vehicle/tug.ac", "Airport/Vehicle/tug-shadow.ac", "Airport/Vehicle/BlueFlashFast.ac", "Maritime/silvershadow.ac",
                "Transport/bus.ac", "Transport/bus_LOD2.ac", "Effects/smoke.ac", "Industrial/crane.ac"):
        (scenery / rel).parent.mkdir(parents=True, exist_ok=True)
        (scenery / rel).write_text(_ac3d_grid())
    (models / "Industrial").mkdir(parents=True)
    (models / "Industrial" / "crane.ac").write_text(_ac3d_grid())     # flightgear-data-models lists it
    tile = scenery.parent / "Objects" / "w130n30" / "w123n37"
    tile.mkdir(parents=True)
    (tile / "KSFO_tower.ac").write_text(_ac3d_grid())
    cands = sources.list_flightgear_scenery(scenery, models)
    assert [Path(c.path).relative_to(scenery.parent).as_posix() for c in cands] == \
        ["Models/Airport/Vehicle/tug.ac", "Models/Maritime/silvershadow.ac", "Models/Transport/bus.ac",  # a ship, not a shadow
         "Objects/w130n30/w123n37/KSFO_tower.ac"]
    assert [c.category for c in cands] == ["Airport", "Maritime", "Transport", "Objects"]
    assert all(c.source == "flightgear-data-base" for c in cands)
    assert sources.SOURCES["flightgear-data-base"].loader is sources.load_ac3d


# ----------------------------------------------------------------------------- game collections added to corpus v2

def _upright(parts) -> np.ndarray:
    """Extents of the loaded parts in the world frame."""
    return np.ptp(np.concatenate([p.positions.reshape(-1, 3) for p in parts]), 0)


def test_g3d_round_trip_reads_frame_zero_and_damage_is_a_clear_error():
    from core.data.g3d import G3DError, read_g3d, write_g3d
    box = tall_box()
    uv = np.random.default_rng(0).random((len(box.vertices), 2)).astype(np.float32)
    data = write_g3d([(box.vertices, box.faces, uv, "tex/skin.png"), (box.vertices * 2, box.faces, None, "")], frames=3)
    a, b = read_g3d(data)
    assert np.allclose(a.vertices, box.vertices) and np.array_equal(a.faces, box.faces) and np.allclose(a.uv, uv)
    assert a.texture == "tex/skin.png" and b.uv is None and b.texture == "" and np.allclose(b.vertices, box.vertices * 2)
    for bad in (data[:50], b"G3X" + data[3:], data[:3] + b"\x03" + data[4:], data[:-8]):
        with pytest.raises(G3DError):
            read_g3d(bad, "x.g3d")


def test_megaglest_lists_each_units_standing_model_once_and_paints_team_colour(tmp_path):
    from core.data.g3d import write_g3d
    box = tall_box((0.4, 1.0, 0.6))                                             # +Y up: 1.0 tall
    uv = np.random.default_rng(0).random((len(box.vertices), 2)).astype(np.float32)
    unit = tmp_path / "techs/t/factions/f/units/archer"
    (unit / "models").mkdir(parents=True)
    for anim in ("archer_walk", "archer_idle"):
        (unit / "models" / f"{anim}.g3d").write_bytes(write_g3d([(box.vertices, box.faces, uv, "skin.png")],
                                                               team_colour=True))
    skin = Image.new("RGBA", (8, 8), (10, 200, 10, 255))
    skin.putpixel((0, 0), (0, 0, 0, 0))                                         # a team-colour texel
    skin.save(unit / "models" / "Skin.PNG")                                     # found case-insensitively
    (unit / "archer.xml").write_text('<unit><skills><skill><type value="move"/><animation path="models/archer_walk.g3d"/>'
                                     '</skill><skill><type value="stop"/><animation path="models/archer_idle.g3d"/>'
                                     '</skill></skills></unit>')
    for ts in ("forest", "winter"):
        (tmp_path / "tilesets" / ts / "models").mkdir(parents=True)
    rock = tmp_path / "tilesets/forest/models/rock.g3d"
    rock.write_bytes(write_g3d([(box.vertices, box.faces, None, "")]))
    (tmp_path / "tilesets/winter/models/rock.g3d").symlink_to(rock)               # shared: counts once
    cands = sources.list_megaglest(tmp_path)
    assert [Path(c.path).name for c in cands] == ["archer_idle.g3d", "rock.g3d"]
    parts = sources.load_megaglest(cands[0])
    assert np.argmax(_upright(parts)) == 2                                      # Y up became Z up
    tex = np.asarray(parts[0].texture)
    assert tex[..., 3].min() == 255 and tuple(tex[0, 0, :3]) == sources.TEAM_COLOUR
    assert np.allclose(sources.load_megaglest(cands[1])[0].colors[0, 0, :3], [0.8, 0.5, 0.2])  # material colour
    (unit / "models" / "Skin.PNG").unlink()
    with pytest.raises(MeshError, match="texture skin.png not found"):
        sources.load_megaglest(cands[0])


PIE2 = """PIE 2
TYPE 200
TEXTURE 0 page-1.png 256 256
LEVELS 2
LEVEL 1
POINTS 4
 0 0 0
 10 0 0
 10 20 0
 0 20 0
POLYGONS 1
 200 4 0 1 2 3 0 0 128 0 128 256 0 256
CONNECTORS 1
 0 0 0
LEVEL 2
POINTS 3
 0 0 5
 10 0 5
 0 20 5
POLYGONS 1
 4200 3 0 1 2 1 1 8 8 0 0 128 0 0 256
"""


def test_pie_reads_levels_fans_and_both_uv_conventions():
    from core.data.pie import PIEError, read_pie
    m = read_pie(PIE2)
    assert m.texture == "page-1.png" and len(m.vertices) == 7
    assert m.faces.tolist() == [[0, 1, 2], [0, 2, 3], [4, 5, 6]]               # a quad as a fan; level 2 offset
    assert np.allclose(m.uv[0], [[0, 1], [0.5, 1], [0.5, 0]])                  # pixels of 256, v flipped
    assert np.allclose(m.uv[2], [[0, 1], [0.5, 1], [0, 0]])                    # texture animation numbers skipped
    v3 = PIE2.replace("PIE 2", "PIE 3").replace("128", "0.5").replace("256", "1")
    assert np.allclose(read_pie(v3).uv, m.uv)                                  # fractions from version 3 on
    for bad in ("PIE 9\n", PIE2.replace("POINTS 4", "POINTS 400"), PIE2.replace(" 200 4 0 1 2 3", " 200 4 0 1 2 9"),
                PIE2.replace(" 10 20 0", " 10 x 0")):
        with pytest.raises(PIEError):
            read_pie(bad, "x.pie")


def test_warzone_lists_whole_structures_and_features_and_loads_its_texture_page(tmp_path):
    archive = tmp_path / "base.wz"
    tall = PIE2.replace(" 10 20 0", " 10 20 7").replace(" 0 20 0", " 0 20 7")
    with zipfile.ZipFile(archive, "w") as z:
        for n in ("structs/blhq.pie", "features/mijeep.pie", "components/bodies/body1.pie", "effects/fx.pie",
                  "structs/blderik_anim.pie", "structs/dummy.pie"):
            z.writestr(n, tall)
        z.writestr("texpages/page-1.png", png_bytes())
    cands = sources.list_warzone(archive)
    assert [c.member for c in cands] == ["features/mijeep.pie", "structs/blhq.pie"]
    parts = sources.load_warzone(cands[0])
    assert parts[0].texture is not None and np.argmax(_upright(parts)) == 2      # +Y up -> +Z up
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("structs/nopage.pie", tall.replace("page-1.png", "page-2.png"))
    with pytest.raises(MeshError, match="texpages/page-2.png not in the archive"):
        sources.load_warzone(sources.Candidate("warzone2100-data", "x", str(archive), "structs/nopage.pie"))


def test_spm_round_trip_with_byte_and_short_indices_and_damage():
    from core.data.spm import SPMError, read_spm, write_spm
    box = tall_box()
    ball = trimesh.creation.icosphere(subdivisions=3)                           # 642 vertices: uint16 indices
    uv = np.random.default_rng(0).random((len(box.vertices), 2)).astype(np.float32)
    data = write_spm([(box.vertices, box.faces, uv, "skin.png"), (ball.vertices, ball.faces, None, "")])
    a, b = read_spm(data)
    assert np.allclose(a.vertices, box.vertices) and np.array_equal(a.faces, box.faces) and a.texture == "skin.png"
    assert np.abs(a.uv - uv).max() < 1e-3                                      # half floats
    assert np.array_equal(b.faces, ball.faces) and b.uv is None and np.allclose(b.colors, 1)
    for bad in (data[:40], b"SX" + data[2:], data[:2] + bytes([(2 << 3) | 2]) + data[3:], data[:-10]):
        with pytest.raises(SPMError):
            read_spm(bad, "x.spm")


def test_supertuxkart_assembles_library_props_and_karts_and_drops_flat_track_pieces(tmp_path):
    from core.data.spm import write_spm
    box = tall_box((0.4, 1.0, 0.6))                                             # Irrlicht +Y up: 1.0 tall
    uv = np.random.default_rng(0).random((len(box.vertices), 2)).astype(np.float32)
    lib = tmp_path / "library" / "stklib_lamp_a"
    lib.mkdir(parents=True)
    (lib / "lamp_main.spm").write_bytes(write_spm([(box.vertices, box.faces, uv, "lamp.png")]))
    (lib / "lamp_col.spm").write_bytes(write_spm([(box.vertices * 5, box.faces, None, "")]))
    (lib / "node.xml").write_text('<scene><object model="lamp_col.spm" interaction="physicsonly"/>'
                                  '<object model="lamp_main.spm" xyz="0 0 0" interaction="ghost"/>'
                                  '<object model="lamp_main.spm" xyz="0 3 0" hpr="0 0 0" scale="1 1 1"/></scene>')
    (tmp_path / "textures").mkdir()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "textures" / "lamp.png")   # the shared texture folder
    (tmp_path / "library" / "gfx_sparks_a").mkdir()
    (tmp_path / "library" / "gfx_sparks_a" / "node.xml").write_text("<scene/>")
    kart = tmp_path / "karts" / "tux"
    kart.mkdir(parents=True)
    (kart / "tux.spm").write_bytes(write_spm([(box.vertices, box.faces, None, "")]))
    (kart / "wheel.spm").write_bytes(write_spm([(box.vertices * 0.2, box.faces, None, "")]))
    (kart / "kart.xml").write_text('<kart model-file="tux.spm"><wheels><front-left position="2 0 0" model="wheel.spm"/>'
                                   '</wheels></kart>')
    track = tmp_path / "tracks" / "farm"
    track.mkdir(parents=True)
    (track / "scene.xml").write_text('<scene><track model="farm_track.spm"/></scene>')
    sheet = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]] * 6, [[0, 1, 2], [0, 2, 3]] * 12)
    for name, mesh in (("farm_track", box), ("barn", box), ("InvisibleWall", box), ("ground", sheet)):
        (track / f"{name}.spm").write_bytes(write_spm([(mesh.vertices, mesh.faces, None, "")]))
    cands = {c.name: c for c in sources.list_stk(tmp_path)}
    assert set(cands) == {"stk-lib-stklib-lamp-a", "stk-kart-tux", "stk-farm-barn", "stk-farm-ground"}
    lamp = sources.load_stk(cands["stk-lib-stklib-lamp-a"])
    assert len(lamp) == 2 and all(p.texture is not None for p in lamp)          # collision mesh left out
    assert np.allclose(_upright(lamp), [0.4, 0.6, 4.0])                         # (x, y, z) -> (x, z, y); stacked 3 up
    m = trimesh.Trimesh(lamp[0].positions.reshape(-1, 3), np.arange(36).reshape(-1, 3))
    m.merge_vertices()
    assert m.volume > 0                                                         # the mirror's winding undone: outward
    assert np.allclose(_upright(sources.load_stk(cands["stk-kart-tux"])), [2.24, 0.6, 1.0])  # a wheel (0.08 wide) at x = 2
    assert len(sources.load_stk(cands["stk-farm-barn"])) == 1
    with pytest.raises(MeshError, match="flat"):
        sources.load_stk(cands["stk-farm-ground"])


def test_torcs_crrcsim_and_opencity_list_objects_not_scenes_or_parts(tmp_path):
    for rel in ("cars/dtm/dtm.acc", "cars/dtm/dtm-lod1.acc", "data/objects/tree1.ac", "tracks/road/road.ac",
                "wheels/w1/wheel0.acc"):
        (tmp_path / "torcs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "torcs" / rel).write_text(_ac3d_grid())
    assert [c.name for c in sources.list_torcs(tmp_path / "torcs")] == ["torcs-car-dtm", "torcs-object-tree1"]
    for rel in ("vehicle/truck/truck.ac", "path/road/road_s_n/road_s_n.ac"):
        (tmp_path / "oc" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "oc" / rel).write_text(_ac3d_grid())
    assert [(c.name, c.category) for c in sources.list_opencity(tmp_path / "oc")] == [("opencity-vehicle-truck", "vehicle")]
    (tmp_path / "crrc" / "objects").mkdir(parents=True)
    (tmp_path / "crrc" / "objects" / "glider.ac").write_text(_ac3d_grid())
    assert [c.name for c in sources.list_crrcsim(tmp_path / "crrc")] == ["crrcsim-glider"]
    for name in ("torcs-data", "crrcsim-data", "opencity-data"):
        assert sources.SOURCES[name].loader is sources.load_ac3d


def test_zero_ad_texture_alpha_is_transparency_only_for_transparent_materials():
    """A 0 A.D. texture's alpha is a player-colour mask or unused unless its actor's material is a
    transparent one: read as transparency, it cut every sword and helmet crest away (empty views)."""
    tex = Image.new("RGBA", (4, 4), (10, 200, 10, 255))
    tex.putpixel((0, 0), (0, 0, 0, 0))
    leaf = np.asarray(sources.zero_ad_alpha(tex, "basic_trans_wind.xml"))
    player = np.asarray(sources.zero_ad_alpha(tex, "player_trans_ao_spec.xml"))
    plain = np.asarray(sources.zero_ad_alpha(tex, "no_trans_spec.xml"))
    assert leaf[0, 0, 3] == 0                                                   # a cut-out stays cut out
    assert player[..., 3].min() == 255 and tuple(player[0, 0, :3]) == sources.TEAM_COLOUR
    assert plain[..., 3].min() == 255 and tuple(plain[1, 1, :3]) == (10, 200, 10)
    assert np.array_equal(np.asarray(sources.zero_ad_alpha(tex, "default.xml"))[..., 3], plain[..., 3])
