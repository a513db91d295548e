"""Reference equivalence of Vantage's converters (issue 27, part 4).

The reference code is never copied into this repository: clone FoundationVision/VAR,
Shiran-Yuan/ArchonView and VAST-AI-Research/TripoSR into $VANTAGE_REF (default /work/ref) and
install their own requirements (TripoSR pins transformers 4.35) into a separate virtualenv.

Phase 1, in that virtualenv:
    REFENV/bin/python scripts/verify_weights.py reference
builds VAR's tokenizer, ArchonView d16 and TripoSR from their public code at the published sizes,
fills every tensor with seeded random values, writes them in the published file layouts
(VAR: bare state dict .pth; ArchonView: train.py's {'trainer': {'var_wo_ddp', 'vae_local',
'var_opt', 'config'}, 'args', ...}; TripoSR: bare state dict model.ckpt + config.yaml), and saves
fixed inputs and the reference outputs.

Phase 2, in the project's venv:
    .venv/bin/python scripts/verify_weights.py ours
converts those files with `python -m core.weights fetch NAME --from FILE` (the real converters,
real shapes), runs Vantage's modules on the same inputs and writes the maximum differences to
$VANTAGE_REF/weights_verification.md (the figures core/weights/fetch.py writes into each card).
"""
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
REF = Path(os.environ.get("VANTAGE_REF", "/work/ref"))
OUT = REF / "out"   # ~10 GB: full-size random weights in the published layouts
PROJECT = Path(__file__).resolve().parents[1]
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
DEPTH = 16

TRIPOSR_YAML = """\
cond_image_size: 512

image_tokenizer_cls: tsr.models.tokenizers.image.DINOSingleImageTokenizer
image_tokenizer:
  pretrained_model_name_or_path: "facebook/dino-vitb16"

tokenizer_cls: tsr.models.tokenizers.triplane.Triplane1DTokenizer
tokenizer:
  plane_size: 32
  num_channels: 1024

backbone_cls: tsr.models.transformer.transformer_1d.Transformer1D
backbone:
  in_channels: ${tokenizer.num_channels}
  num_attention_heads: 16
  attention_head_dim: 64
  num_layers: 16
  cross_attention_dim: 768

post_processor_cls: tsr.models.network_utils.TriplaneUpsampleNetwork
post_processor:
  in_channels: 1024
  out_channels: 40

decoder_cls: tsr.models.network_utils.NeRFMLP
decoder:
  in_channels: 120
  n_neurons: 64
  n_hidden_layers: 9
  activation: silu

renderer_cls: tsr.models.nerf_renderer.TriplaneNeRFRenderer
renderer:
  radius: 0.87
  feature_reduction: concat
  density_activation: exp
  density_bias: -1.0
  num_samples_per_ray: 128
"""
DINO_CONFIG = {"architectures": ["ViTModel"], "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
               "hidden_dropout_prob": 0.0, "hidden_size": 768, "image_size": 224, "initializer_range": 0.02,
               "intermediate_size": 3072, "layer_norm_eps": 1e-12, "model_type": "vit", "num_attention_heads": 12,
               "num_channels": 3, "num_hidden_layers": 12, "patch_size": 16, "qkv_bias": True}


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm weights and biases around 1, matrices ~ N(0, 1/fan_in)), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():   # buffers (image mean/std, masks) stay as built
            if t.dim() <= 1 and "norm" in name:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() >= 2:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(max(fan_in, 1)))
            else:
                t.copy_(0.05 * torch.randn(t.shape, generator=g))


def smooth_image(size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 16, size // 16, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


# ----------------------------------------------------------------------------- phase 1: reference

def reference() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    res = {}
    # ---- VAR tokenizer + ArchonView (ArchonView's models/ is VAR's plus the source prefix)
    if (OUT / "archonview_io.pt").is_file():
        print("archonview: reference outputs exist, skipped")
    else:
        res.update(reference_archonview())
    res.update(reference_triposr())
    (OUT / "reference.json").write_text(json.dumps({**res, "torch": torch.__version__,
                                                    "transformers": __import__("transformers").__version__}))
    print(json.dumps(res))


def reference_archonview() -> dict:
    sys.path.insert(0, str(REF / "ArchonView"))
    fake_clip = types.ModuleType("clip")

    class _Clip:
        def to(self, d):
            return self

        def eval(self):
            return self

        def encode_text(self, t):
            return torch.randn(1, 768, generator=torch.Generator().manual_seed(7))
    fake_clip.load = lambda name, **kw: (_Clip(), None)
    fake_clip.tokenize = lambda texts: torch.zeros(1, 77, dtype=torch.long)
    sys.modules["clip"] = fake_clip          # ArchonView computes its null embedding with OpenAI's clip at build
    from models import build_vae_var         # noqa: E402  (ArchonView's)
    t0 = time.time()
    vae, var = build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, device="cpu", patch_nums=PATCH_NUMS,
                             depth=DEPTH, shared_aln=False, flash_if_available=False, fused_if_available=False)
    randomise(vae, 1)
    randomise(var, 2)
    vae.eval(), var.eval()
    var.cond_drop_rate = 0.0                 # its forward drops the condition at random even in eval mode
    torch.save(vae.state_dict(), OUT / "vae_ch160v4096z32.pth")
    torch.save({"epoch": 1, "iter": 0,
                "trainer": {"config": {"patch_nums": PATCH_NUMS, "resos": tuple(16 * p for p in PATCH_NUMS),
                                       "label_smooth": 0.0, "prog_it": 0, "last_prog_si": -1, "first_prog": True},
                            "var_wo_ddp": var.state_dict(), "vae_local": vae.state_dict(),
                            "var_opt": {"optimizer": {"state": {}, "param_groups": [{"lr": 8e-5, "params": []}]}}},
                "args": {"depth": DEPTH, "bs": 768, "tblr": 8e-5, "data_path": "/data", "fp16": 1}},
               OUT / f"ar-ckpt-d{DEPTH}-best.pth")
    with torch.no_grad():
        src, tgt = smooth_image(256, 3) * 2 - 1, smooth_image(256, 4) * 2 - 1
        src_idx = vae.img_to_idxBl(src)
        tgt_idx = vae.img_to_idxBl(tgt)
        dec = vae.idxBl_to_img(tgt_idx, same_shape=True, last_one=True)
        y = vae.quantize.embedding(torch.cat(src_idx, 1))
        x_tf = vae.quantize.idxBl_to_var_input(tgt_idx)
        emb = torch.nn.functional.normalize(torch.randn(1, 768, generator=torch.Generator().manual_seed(5)), dim=-1)
        pose = torch.tensor([[0.3, math.sin(1.1), math.cos(1.1), 0.1]])
        logits = var(emb, x_tf, y, pose)
    torch.save({"src": src, "tgt": tgt, "src_idx": src_idx, "tgt_idx": tgt_idx, "decoded": dec, "x_tf": x_tf,
                "emb": emb, "pose": pose, "logits": logits, "null_emb": var.null_emb.clone()}, OUT / "archonview_io.pt")
    del vae, var
    for m in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
        del sys.modules[m]
    sys.path.remove(str(REF / "ArchonView"))
    return {"archonview_s": round(time.time() - t0, 1)}


def reference_triposr() -> dict:
    sys.path.insert(0, str(REF / "TripoSR"))
    sys.modules["rembg"] = types.ModuleType("rembg")               # background removal: not used here
    sys.modules["torchmcubes"] = types.ModuleType("torchmcubes")   # meshing only; not compared here
    sys.modules["torchmcubes"].marching_cubes = None
    (OUT / "dino").mkdir(exist_ok=True)
    (OUT / "dino" / "config.json").write_text(json.dumps(DINO_CONFIG))
    (OUT / "config.yaml").write_text(TRIPOSR_YAML)
    import tsr.models.tokenizers.image as tsr_image          # noqa: E402
    tsr_image.hf_hub_download = lambda repo_id, filename, **kw: str(OUT / "dino" / filename)
    from tsr.system import TSR                                # noqa: E402
    t0 = time.time()
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(OUT / "config.yaml")
    OmegaConf.resolve(cfg)
    model = TSR(cfg)
    randomise(model, 11)
    model.eval()
    torch.save(model.state_dict(), OUT / "model.ckpt")
    g = torch.Generator().manual_seed(12)
    img = torch.full((512, 512, 3), 0.5)
    yy, xx = torch.meshgrid(torch.arange(512), torch.arange(512), indexing="ij")
    disc = ((yy - 250) ** 2 + (xx - 270) ** 2) < 170 ** 2
    img[disc] = smooth_image(512, 13)[0].permute(1, 2, 0)[disc] * 0.8
    pts = (torch.rand(1, 4096, 3, generator=g) * 2 - 1) * 0.87
    with torch.no_grad():
        codes = model([img.numpy()], device="cpu")
        out = model.renderer.query_triplane(model.decoder, pts[0], codes[0])
    torch.save({"image": img, "planes": codes, "points": pts, "density": out["density_act"][..., 0],
                "color": out["color"]}, OUT / "triposr_io.pt")
    return {"triposr_s": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------- phase 2: ours

def ours() -> None:
    sys.path.insert(0, str(PROJECT))
    os.chdir(PROJECT)
    models = OUT / "models"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    from core.compat import ensure_torchvision
    ensure_torchvision()
    import open_clip
    from safetensors.torch import save_file
    if not (OUT / "open_clip_model.safetensors").is_file():   # random CLIP in open_clip's layout: the converter needs one
        with torch.no_grad():
            clip = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None)
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, OUT / "open_clip_model.safetensors")
        del clip
    timings = {}
    for name, src in (("var-tokenizer-256", "vae_ch160v4096z32.pth"), ("clip-vit-l-14", "open_clip_model.safetensors"),
                      (f"archonview-d{DEPTH}", f"ar-ckpt-d{DEPTH}-best.pth"), ("triposr", "model.ckpt")):
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "core.weights", "fetch", name, "--to", str(models), "--from", str(OUT / src),
                        "--force"], check=True, env=env)
        timings[name] = round(time.time() - t0, 1)
    from core.nvs.model import NVSTransformer
    from core.recon.triposr import TripoSRModel
    from core.tokenizer import MultiScaleVQVAE
    rows = []
    io = torch.load(OUT / "archonview_io.pt", weights_only=True)
    tok = MultiScaleVQVAE.from_pretrained(models / f"archonview-d{DEPTH}" / "tokenizer").eval()
    with torch.no_grad():
        src_idx, tgt_idx = tok.encode_indices(io["src"]), tok.encode_indices(io["tgt"])
        same_src = all(torch.equal(a, b) for a, b in zip(src_idx, io["src_idx"]))
        same_tgt = all(torch.equal(a, b) for a, b in zip(tgt_idx, io["tgt_idx"]))
        n_diff = sum(int((a != b).sum()) for a, b in zip(tgt_idx + src_idx, io["tgt_idx"] + io["src_idx"]))
        dec = tok.decode_indices(io["tgt_idx"])
        x_tf = tok.teacher_forcing_inputs(io["tgt_idx"])
        rows.append(("VAR tokenizer", "token indices (680 + 680, two 256 px images)",
                     "identical" if same_src and same_tgt else f"{n_diff} of 1360 differ"))
        rows.append(("VAR tokenizer", "decoded 256 px image from the same indices, max abs diff",
                     f"{(dec - io['decoded']).abs().max().item():.2e}"))
        rows.append(("VAR tokenizer", "teacher-forcing input (679 x 32), max abs diff",
                     f"{(x_tf - io['x_tf']).abs().max().item():.2e}"))
        nvs = NVSTransformer.from_pretrained(models / f"archonview-d{DEPTH}").eval()
        nvs.null_emb.copy_(torch.nn.functional.normalize(io["null_emb"].reshape(-1), dim=-1))  # CFG only; not in the weights
        y = tok.lookup(torch.cat(io["src_idx"], 1))                 # the source's codebook vectors, as ArchonView's demo
        logits = nvs(io["emb"], io["pose"], y, io["x_tf"])
        d = (logits - io["logits"]).abs()
        rows.append((f"ArchonView d{DEPTH}", "teacher-forced logits (680 x 4096, fp32), max abs diff",
                     f"{d.max().item():.2e} (logit scale {io['logits'].abs().max().item():.1f}; argmax agree "
                     f"{(logits.argmax(-1) == io['logits'].argmax(-1)).float().mean().item() * 100:.2f} %)"))
    del nvs, tok
    io = torch.load(OUT / "triposr_io.pt", weights_only=True)
    m = TripoSRModel.from_pretrained(models / "triposr").eval()
    with torch.no_grad():
        x = io["image"].permute(2, 0, 1)[None, None] * 2 - 1
        st = m(x)
        sigma, rgb = m.query(st, io["points"])
        dens = sigma / m.config.density_scale
        rows.append(("TripoSR", "triplanes 3 x 40 x 64 x 64, max abs diff",
                     f"{(st.planes - io['planes']).abs().max().item():.2e} (scale {io['planes'].abs().max().item():.1f})"))
        rel = ((dens - io["density"]).abs() / io["density"].abs().clamp(min=1e-6)).max().item()
        rows.append(("TripoSR", "density at 4,096 points in the box, max abs diff",
                     f"{(dens - io['density']).abs().max().item():.2e} (max rel {rel:.1e}; range "
                     f"{io['density'].min().item():.2g}..{io['density'].max().item():.2g})"))
        rows.append(("TripoSR", "colour at the same points, max abs diff", f"{(rgb - io['color']).abs().max().item():.2e}"))
    ref = json.loads((OUT / "reference.json").read_text())
    lines = ["# Published weights: reference equivalence", "",
             "Same random weights (seeded, every tensor) loaded into the public reference code and into Vantage "
             "through its converters (`python -m core.weights fetch NAME --from FILE`, published file layouts and "
             "full published sizes); same inputs; fp32 on CPU. Script: scripts/verify_weights.py "
             f"(reference: torch {ref['torch']}, transformers {ref['transformers']} as TripoSR pins; Vantage: torch "
             f"{torch.__version__}).", "",
             "| model | output | result |", "| --- | --- | --- |",
             *(f"| {a} | {b} | {c} |" for a, b, c in rows), "",
             "Reference repositories: FoundationVision/VAR (tokenizer code as vendored by ArchonView), "
             "Shiran-Yuan/ArchonView, VAST-AI-Research/TripoSR. Conversion times (1 thread): "
             + ", ".join(f"{k} {v} s" for k, v in timings.items()) + ".", ""]
    (REF / "weights_verification.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    {"reference": reference, "ours": ours}[sys.argv[1]]()
