"""Dataset reader/writer: plain ArchonView folders, extended files, bad files named."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import cameras
from core.data import io


def _write_object(folder, n=3, size=32, rgba=False, extras=True):
    for i in range(n):
        img = Image.new("RGBA" if rgba else "RGB", (size, size), (255, 255, 255, 0) if rgba else (255, 255, 255))
        for x in range(8, 24):
            for y in range(8, 24):
                img.putpixel((x, y), (200, 30 * i, 10, 255) if rgba else (200, 30 * i, 10))
        w2c = cameras.pose_from_spherical(30.0 * i, 10.0, 2.0)
        if extras:
            alpha = np.zeros((size, size), np.float32); alpha[8:24, 8:24] = 1
            io.write_view(folder, i, img, w2c, alpha=alpha, depth=np.full((size, size), 2.0, np.float32),
                          embedding=np.arange(768, dtype=np.float32))
        else:  # ArchonView's own files only
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:03d}.png"); np.save(folder / f"{i:03d}.npy", w2c)
    return folder


def test_plain_archonview_folder_reads(tmp_path):
    obj = _write_object(tmp_path / "obj", extras=False)
    assert io.view_ids(obj) == ["000", "001", "002"]
    v = io.read_view(obj, "001", size=16)
    assert v.image.size == (16, 16) and v.image.mode == "RGB"
    assert v.alpha is None and v.depth is None and v.embedding is None
    assert v.fov_deg == pytest.approx(cameras.DEFAULT_FOV_DEG)
    np.testing.assert_allclose(v.w2c, cameras.pose_from_spherical(30, 10, 2), atol=1e-6)


def test_rgba_is_composited_on_white_and_alpha_kept(tmp_path):
    obj = _write_object(tmp_path / "obj", rgba=True, extras=False)
    v = io.read_view(obj, "000")
    arr = np.asarray(v.image)
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[16, 16]) == (200, 0, 10)
    assert v.alpha is not None and v.alpha[0, 0] == 0 and v.alpha[16, 16] == 1


def test_extended_files_and_meta(tmp_path):
    obj = _write_object(tmp_path / "obj")
    io.write_meta(obj, {"fov_deg": 40.0, "image_size": 32})
    v = io.read_view(obj, "002", size=16)
    assert v.fov_deg == 40.0 and v.alpha.shape == (16, 16) and v.depth.shape == (16, 16)
    assert v.embedding.shape == (768,) and v.embedding[5] == 5


def test_list_objects_accepts_root_flat_and_single(tmp_path):
    for split, name in [("train", "a"), ("train", "b"), ("val", "c")]:
        _write_object(tmp_path / "root" / split / name, n=2, extras=False)
    assert [p.name for p in io.list_objects(tmp_path / "root")] == ["a", "b", "c"]
    assert [p.name for p in io.list_objects(tmp_path / "root", "val")] == ["c"]
    assert [p.name for p in io.list_objects(tmp_path / "root" / "train")] == ["a", "b"]
    assert io.list_objects(tmp_path / "root" / "val" / "c") == [tmp_path / "root" / "val" / "c"]
    with pytest.raises(io.DataError, match="not a directory"):
        io.list_objects(tmp_path / "nope")


def test_bad_files_are_named(tmp_path):
    obj = _write_object(tmp_path / "obj", extras=False)
    (obj / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(io.DataError, match="001.png"):
        io.read_view(obj, "001")
    np.save(obj / "002.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(io.DataError, match=r"002\.npy.*shape"):
        io.read_view(obj, "002")
    (obj / "000.npy").unlink()
    with pytest.raises(io.DataError, match=r"000\.npy: missing"):
        io.read_view(obj, "000")
    (obj / "meta.json").write_text("{broken")
    with pytest.raises(io.DataError, match="meta.json"):
        io.object_fov(obj)


def test_view_pair_dataset(tmp_path):
    for name in "ab":
        _write_object(tmp_path / "train" / name, n=4)
    ds = io.ViewPairDataset(tmp_path, size=16, split="train", pairs_per_object=3, seed=0)
    assert len(ds) == 6
    item = ds[4]
    assert item["source"].shape == item["target"].shape == (3, 16, 16)
    assert item["source"].min() >= -1 and item["source"].max() <= 1
    expect = cameras.relative_pose(item["source_w2c"].numpy(), item["target_w2c"].numpy())
    torch.testing.assert_close(item["rel_pose"], torch.from_numpy(expect))
    assert not torch.equal(item["source_w2c"], item["target_w2c"])  # distinct views
    assert item["target_alpha"].shape == (16, 16)
    # seeded -> the same pair every time
    torch.testing.assert_close(ds[4]["target"], item["target"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["source"].shape == (2, 3, 16, 16)


def test_tensor_image_round_trip():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(io.tensor_to_image(io.image_to_tensor(img))), np.asarray(img))


def test_compressed_depth_reads_as_the_plain_one(tmp_path):
    import numpy as np
    from core.data.io import depth_path, load_depth, save_depth
    d = np.zeros((16, 16), np.float32)
    d[4:12, 4:12] = 1.75
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = save_depth(tmp_path / "a", "000", d)
    b = save_depth(tmp_path / "b", "000", d, compressed=True)
    assert a.suffix == ".npy" and b.suffix == ".npz" and depth_path(tmp_path / "b", "000") == b
    assert np.array_equal(load_depth(a), load_depth(b)) and load_depth(b).dtype == np.float32
