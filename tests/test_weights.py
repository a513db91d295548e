"""`python -m core.weights`: the registry, fetching from a fake local Hub cache (HF_HUB_OFFLINE=1, no
network), conversion of generated stand-ins of each published file (names, nesting and file
layout of the real ones, tiny sizes) into checkpoints that run through the pipelines and the app's
backend, the offline error, bad files, and `--models` in the app, core.photo and core.eval/bench."""
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.weights.registry as registry
from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
from core.weights.__main__ import main as weights_main

sys.path.insert(0, str(Path(__file__).parent))
from published_standins import TINY_TRIPOSR_YAML, archonview_checkpoint, triposr_state_dict  # noqa: E402
from test_nvs import archonview_state_dict  # noqa: E402

torch.set_num_threads(1)
TINY_TOK = dict(resolution=32, patch_size=2, ch=16, ch_mult=(1, 2), norm_groups=8, latent_dim=8, vocab_size=64,
                patch_nums=(1, 2, 4, 8))
CLIP_NAME = "vantage-tiny-clip"
REV = "0123456789abcdef0123456789abcdef01234567"


class _Boom:
    """A pickle that would run code when loaded (it must never be)."""
    marker = None

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def fake_hub(cache: Path, repo: str, files: dict, repo_type: str = "model") -> None:
    """huggingface_hub's cache layout (refs/main -> snapshots/<rev>/...), as a download leaves it."""
    root = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    for name, src in files.items():
        dst = root / "snapshots" / REV / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src) if isinstance(src, bytes) else shutil.copy(src, dst)


def register_tiny_clip(tmp: Path) -> None:
    from core.compat import ensure_torchvision
    ensure_torchvision()
    import open_clip
    cfg = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp / "clipcfg").mkdir(exist_ok=True)
    (tmp / "clipcfg" / f"{CLIP_NAME}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / "clipcfg")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Stand-ins of the four published files, written as their projects publish them."""
    from safetensors.torch import save_file
    d = tmp_path_factory.mktemp("published")
    register_tiny_clip(d)
    import open_clip
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(TokenizerConfig(**TINY_TOK)).state_dict()
    vae["quantize.ema_vocab_hit_SV"] = torch.zeros(4, 64)          # VAR keeps it in its file
    torch.save(vae, d / "vae_ch160v4096z32.pth")                      # VAR: a bare state dict
    clip = open_clip.create_model(CLIP_NAME, pretrained=None).state_dict()
    save_file({k: v.contiguous() for k, v in clip.items()}, d / "open_clip_model.safetensors")
    ar = archonview_state_dict(depth=2, V=64, Cvae=8, patch_nums=TINY_TOK["patch_nums"], E=32)
    torch.save(archonview_checkpoint(ar, vae), d / "ar-ckpt-best.pth")  # ArchonView: train.py's training checkpoint
    torch.save(triposr_state_dict(), d / "model.ckpt")                # TripoSR: a bare state dict
    (d / "config.yaml").write_text(TINY_TRIPOSR_YAML)
    return d


@pytest.fixture
def tiny_registry(monkeypatch, published):
    """The registry with the tiny shapes of the stand-ins (same entries, repos and file rules)."""
    reg = dict(registry.REGISTRY)
    reg["var-tokenizer-256"] = dataclasses.replace(reg["var-tokenizer-256"], options={"config": TokenizerConfig(**TINY_TOK)})
    reg["clip-vit-l-14"] = dataclasses.replace(reg["clip-vit-l-14"], options={"model_name": CLIP_NAME})
    reg["archonview-d2"] = dataclasses.replace(reg["archonview-d12"], name="archonview-d2", options={"depth": 2})
    monkeypatch.setattr(registry, "REGISTRY", reg)
    for mod in ("core.weights", "core.weights.__main__"):
        monkeypatch.setattr(sys.modules[mod], "REGISTRY", reg)
    return reg


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, published):
    """A local Hub cache holding the stand-ins; offline mode, as tests always are."""
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    fake_hub(cache, "FoundationVision/var", {"vae_ch160v4096z32.pth": published / "vae_ch160v4096z32.pth"})
    fake_hub(cache, "timm/vit_large_patch14_clip_224.openai",
             {"open_clip_model.safetensors": published / "open_clip_model.safetensors"})
    fake_hub(cache, "anon8567671/ArchonView", {"ckpts/d2/ar-ckpt-best.pth": published / "ar-ckpt-best.pth",
                                               "ckpts/d12/ar-ckpt-best.pth": b"not this one",
                                               "vae_ch160v4096z32.pth": b"tokenizer, skipped", "README.md": b"#"},
             repo_type="dataset")
    fake_hub(cache, "stabilityai/TripoSR", {"model.ckpt": published / "model.ckpt", "config.yaml": published / "config.yaml"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def lower_threshold(folder: Path) -> None:
    """Random weights put TripoSR's density nowhere near its iso-level 25: move the level to this
    field's median so a mesh exists (the config knob the importer writes)."""
    from core.recon import ReconPipeline
    pipe = ReconPipeline.from_pretrained(folder)
    scene = pipe.reconstruct(Image.fromarray(object_rgb()), project_photos=False)
    med = float(scene.density_grid(16).median()) / pipe.config.density_scale
    cfg = json.loads((folder / "config.json").read_text())
    cfg["density_threshold"] = med
    (folder / "config.json").write_text(json.dumps(cfg))


def object_rgb(size=64):
    a = np.full((size, size, 3), 255, np.uint8)
    a[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = (200, 60, 40)
    return a


# ----------------------------------------------------------------------------- registry / list / pick rule

def test_list_names_every_model(tmp_path, capsys):
    assert weights_main(["list", "--to", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)["models"]
    assert {"archonview-d12", "archonview-d16", "var-tokenizer-256", "clip-vit-l-14", "triposr"} <= set(out)
    t = out["triposr"]
    assert t["repo"] == "stabilityai/TripoSR" and t["licence"] == "MIT" and t["size_bytes"] > 1e9 and not t["converted"]
    assert out["archonview-d16"]["requires"] == ["var-tokenizer-256", "clip-vit-l-14"]


def test_depth_pick_rule():
    pick = registry.pick_depth_file
    files = ["README.md", "ckpts/d16/ar-ckpt-best.pth", "ckpts/d16/ar-ckpt-9.pth", "d12.pth", "vae_ch160v4096z32.pth",
             "ckpts/d160/x.pth", "depth_24/model.safetensors"]
    assert pick(files, 16, "r") == "ckpts/d16/ar-ckpt-best.pth"
    assert pick(files, 12, "r") == "d12.pth" and pick(files, 24, "r") == "depth_24/model.safetensors"
    with pytest.raises(ValueError, match="not published"):
        pick(files, 30, "r")
    with pytest.raises(ValueError, match="--file"):
        pick(["a/d20_1.pth", "a/d20_2.pth"], 20, "r")


# ----------------------------------------------------------------------------- offline / bad input

def test_offline_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, names in (("triposr", ("stabilityai/TripoSR", "model.ckpt")),
                        ("archonview-d16", ("var-tokenizer-256", "vae_ch160v4096z32.pth"))):
        assert weights_main(["fetch", name, "--to", str(tmp_path / "models")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "--from" in err[0]
        assert all(n in err[0] for n in names) and "HF_HUB_OFFLINE" in err[0]
    assert not (tmp_path / "models").exists()


def test_bad_files_are_refused_naming_the_file(tmp_path, published, capsys):
    models = tmp_path / "models"
    _Boom.marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": _Boom()}}, tmp_path / "evil.ckpt")
    good = (published / "model.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 2])
    sd = triposr_state_dict()
    sd["decoder.layers.2.weight"] = torch.zeros(16, 7)
    torch.save(sd, tmp_path / "shape.ckpt")
    cases = {"evil.ckpt": "never unpickled", "cut.ckpt": "truncated", "shape.ckpt": r"decoder\.layers\.2\.weight|layout",
             "vae_ch160v4096z32.pth": "not a TripoSR checkpoint"}
    for name, why in cases.items():
        src = tmp_path / name if (tmp_path / name).exists() else published / name
        assert weights_main(["fetch", "triposr", "--to", str(models), "--from", str(src)]) == 2
        err = capsys.readouterr().err
        assert f"error: {src}" in err, err
        assert re.search(why, err), err
        assert not models.exists() or not any(models.iterdir())  # no half-written folder
    assert not _Boom.marker.exists()


# ----------------------------------------------------------------------------- fetch + run

@pytest.fixture
def fetched(tmp_path, tiny_registry, hub_cache, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("VANTAGE_MODELS_DIR", str(models))
    assert weights_main(["fetch", "archonview-d2", "triposr"]) == 0
    lower_threshold(models / "triposr")
    return models


def test_fetch_converts_each_model_with_a_card(fetched, capsys):
    assert sorted(p.name for p in fetched.iterdir()) == ["archonview-d2", "clip-vit-l-14", "triposr", "var-tokenizer-256"]
    for name in ("archonview-d2", "clip-vit-l-14", "triposr", "var-tokenizer-256"):
        card = (fetched / name / "README.md").read_text()
        e = registry.REGISTRY[name]
        assert e.repo in card and e.licence in card and "sha256" in card
    card = (fetched / "archonview-d2" / "README.md").read_text()
    assert "ckpts/d2/ar-ckpt-best.pth" in card                      # the pick rule's choice, named
    cfg = json.loads((fetched / "archonview-d2" / "config.json").read_text())
    assert cfg["clip_model"] == CLIP_NAME and cfg["clip_weights"] == "../clip-vit-l-14/model.safetensors"
    assert weights_main(["fetch", "triposr"]) == 0                  # already converted: nothing to do
    assert "already converted" in capsys.readouterr().err
    assert weights_main(["path", "triposr"]) == 0 and capsys.readouterr().out.strip() == str(fetched / "triposr")


def test_converted_models_run_through_the_app_backend(fetched, tmp_path):
    from core import weights
    from core.nvs.sampling import SamplingParams
    from viewer.backend import Backend, SessionStore
    folders = weights.resolve("archonview-d2,triposr")
    b = Backend.load(None, models=folders, sessions=SessionStore(tmp_path / "s"))
    assert b.nvs_ready and b.recon_ready, b.problems
    s = b.sessions.new()
    b.set_source(s, Image.fromarray(object_rgb(96)), remove_background=True)
    frames = list(b.stream_view(s, 60.0, 0.0, 1.9, SamplingParams(top_k=10)))
    assert frames and frames[-1] is not None
    files = b.lift(s, mesh_resolution=32)
    assert files["glb"].is_file() and files["glb"].stat().st_size > 100
    b.sessions.close_all()


def test_models_flags(fetched, tmp_path, capsys):
    import app
    from core.cli import expand_models
    from core.photo import main as photo_main
    assert set(app.resolve_models("archonview-d2, triposr")) == {"nvs", "recon"}
    assert app.main(["--models", "triposr,archonview-d16", "--port", "7999"]) == 2
    assert "python -m core.weights fetch archonview-d16" in capsys.readouterr().err
    argv = expand_models(["recon", "--models", "triposr", "--data", "x"])
    assert argv == ["recon", "--data", "x", "--checkpoint", str(fetched / "triposr")]
    assert expand_models(["tokenizer", "--models=archonview-d2"])[-1] == str(fetched / "archonview-d2" / "tokenizer")
    Image.fromarray(object_rgb(96)).save(tmp_path / "photo.png")
    assert photo_main(["lift", str(tmp_path / "photo.png"), "--models", "triposr", "--out", str(tmp_path / "o.glb"),
                       "--mesh-resolution", "32", "--quiet"]) == 0
    assert (tmp_path / "o.glb").is_file()
