"""torchvision shim and safe checkpoint loading."""
import dataclasses
import json
import pickle
import subprocess
import sys

import pytest
import torch

from core import checkpoint as ck
from core.compat import _nms


def test_open_clip_imports_on_this_torch():
    code = ("import core.compat as c; c.ensure_torchvision(); import torchvision, open_clip; "
            "import torchvision.transforms as T; import torch; nms = torch.ops.torchvision.nms; "
            "b = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float); "
            "print(nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 2]"


def test_fallback_nms_matches_definition():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 4, 4], [50, 50, 60, 60]], dtype=torch.float)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    assert _nms(boxes, scores, 0.5).tolist() == [1, 2, 3]


@dataclasses.dataclass
class TinyConfig:
    width: int = 4
    depth: int = 1


class Tiny(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(cfg.width, cfg.width) for _ in range(cfg.depth)])


def test_round_trip_and_mismatch_named(tmp_path):
    model = Tiny(TinyConfig())
    ck.save_checkpoint(tmp_path / "m", model.state_dict(), dataclasses.asdict(TinyConfig()))
    cfg = ck.config_from_dict(TinyConfig, ck.load_config(tmp_path / "m"))
    loaded = ck.load_into(Tiny(cfg), tmp_path / "m")
    torch.testing.assert_close(loaded.layers[0].weight, model.layers[0].weight)
    with pytest.raises(ck.CheckpointError, match=r"layers\.0\.weight.*\(4, 4\).*\(8, 8\)"):
        ck.load_into(Tiny(TinyConfig(width=8)), tmp_path / "m")
    with pytest.raises(ck.CheckpointError, match="missing keys.*layers.1"):
        ck.load_into(Tiny(TinyConfig(depth=2)), tmp_path / "m")
    with pytest.raises(ck.CheckpointError, match="unknown field.*colour"):
        ck.config_from_dict(TinyConfig, {"colour": 3})
    (tmp_path / "m" / "config.json").write_text("not json")
    with pytest.raises(ck.CheckpointError, match="config.json.*JSON"):
        ck.load_config(tmp_path / "m")
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.load_config(tmp_path / "absent")


class _Boom:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['VANTAGE_PWNED'], 'w').write('x')",))


@pytest.mark.parametrize("kind", ["torch_save", "raw_pickle", "garbage"])
def test_pickle_in_place_of_checkpoint_is_refused_unexecuted(tmp_path, monkeypatch, kind):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VANTAGE_PWNED", str(marker))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(TinyConfig())))
    target = folder / "model.safetensors"
    if kind == "torch_save":
        torch.save({"x": _Boom()}, target)
    elif kind == "raw_pickle":
        target.write_bytes(pickle.dumps(_Boom(), protocol=4))
    else:
        target.write_bytes(b"\x00" * 3)
    with pytest.raises(ck.CheckpointError, match="model.safetensors"):
        ck.load_into(Tiny(TinyConfig()), folder)
    assert not marker.exists()
