"""Multi-scale residual VQ tokenizer: API semantics, checkpoints, VAR importer, trainer/eval CLIs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.checkpoint import CheckpointError
from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
from core.tokenizer.importer import convert_var_state_dict, import_var_checkpoint

VAR_SHAPES = Path(__file__).parent / "data" / "var_vqvae_ch160v4096z32_shapes.json"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a shared, busy CPU: OpenMP barriers across 2 threads cost more than the work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(**kw):
    base = dict(resolution=32, patch_size=2, ch=16, ch_mult=(1, 2), norm_groups=8, latent_dim=8, vocab_size=64,
                patch_nums=(1, 2, 4, 8))
    base.update(kw)
    return TokenizerConfig(**base)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return MultiScaleVQVAE(tiny_config()).eval()


def images(b=2, r=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, r, r, generator=g) * 2 - 1


def test_default_config_is_the_documented_small_one():
    cfg = TokenizerConfig()
    assert (cfg.resolution, cfg.downsample, cfg.grid) == (128, 8, 16)
    assert cfg.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) and cfg.num_tokens == 680
    assert 1024 <= cfg.vocab_size <= 4096
    n = sum(p.numel() for p in MultiScaleVQVAE(cfg).parameters())
    assert 1e6 < n < 7.5e6  # a few M parameters: <= 30 MB in fp32


@pytest.mark.parametrize("kw, word", [(dict(resolution=40), "resolution"), (dict(patch_nums=(1, 4, 2, 8)), "patch_nums"),
                                      (dict(ch=12), "norm_groups"), (dict(quant_resi=2.0), "quant_resi"),
                                      (dict(chroma_gain=0.0), "chroma_gain"),
                                      (dict(chroma_gain=4.0, in_channels=1), "chroma_gain")])
def test_bad_config_is_named(kw, word):
    with pytest.raises(ValueError, match=word):
        tiny_config(**kw)


def test_encode_decode_shapes_and_consistency(tok):
    x = images()
    idx = tok.encode_indices(x)
    assert [tuple(i.shape) for i in idx] == [(2, p * p) for p in tok.config.patch_nums]
    assert all(i.dtype == torch.long and int(i.min()) >= 0 and int(i.max()) < 64 for i in idx)
    img = tok.decode_indices(idx)
    assert img.shape == (2, 3, 32, 32) and float(img.abs().max()) <= 1.0
    idx2, fhats = tok.encode_fhats(x)
    assert all(torch.equal(a, b) for a, b in zip(idx, idx2))
    assert torch.allclose(tok.decode_fhat(fhats[-1]), img, atol=1e-5)
    # stepping with next_input from empty_fhat reproduces every partial f_hat of the encoder
    f = tok.empty_fhat(2)
    assert f.shape == (2, 8, 8, 8) and float(f.abs().sum()) == 0
    for si, i in enumerate(idx):
        f, _ = tok.next_input(si, f, i)
        assert torch.allclose(f, fhats[si], atol=1e-5)


def test_opponent_colour_ends_precondition_chroma_and_keep_var_names():
    from core.tokenizer.model import opponent_colour
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    m1, m4 = opponent_colour(1.0), opponent_colour(4.0)
    grey1, grey4 = rgb[3] @ m1.T, rgb[3] @ m4.T
    assert torch.allclose(grey1, torch.tensor([0.5, 0.0, 0.0])) and torch.allclose(grey4, grey1)  # grey has no chroma
    assert torch.allclose((rgb[:3] @ m4.T)[:, 1:], 4 * (rgb[:3] @ m1.T)[:, 1:])  # chroma scaled by the gain
    # the decoder's output map turns chroma predicted 4x smaller back into full RGB chroma
    out = torch.linalg.inv(opponent_colour(0.25))
    pred = rgb[:3] @ opponent_colour(0.25).T
    assert torch.allclose(pred @ out.T, rgb[:3], atol=1e-6)
    torch.manual_seed(0)
    plain, opp = MultiScaleVQVAE(tiny_config()), MultiScaleVQVAE(tiny_config(chroma_gain=4.0))
    assert plain.state_dict().keys() == opp.state_dict().keys()  # fixed maps are not weights: VAR names unchanged
    opp.load_state_dict(plain.state_dict())
    x = images()
    with torch.no_grad():  # same weights, different colour ends: the maps are really applied
        assert not torch.allclose(plain.encoder(x), opp.encoder(x))
        z = plain.encoder(x)
        assert not torch.allclose(plain.decoder(z), opp.decoder(z))


def test_preview_decode_is_cheap_for_coarse_scales_and_exact_for_fine(tok):
    idxs, fhats = tok.encode_fhats(images())
    G = tok.config.grid
    for pn, fh in zip(tok.config.patch_nums, fhats):
        fast, full = tok.decode_preview(fh, pn, fast=True), tok.decode_preview(fh, pn)
        assert fast.shape == full.shape == (2, 3, 32, 32)
        assert torch.allclose(full, tok.decode_fhat(fh))
        if pn > G // 2:
            assert torch.allclose(fast, full)
        else:  # decoded from an area-downsampled map: a different, smoother image
            assert not torch.allclose(fast, full)
            tv = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()
            assert tv(fast) < tv(full)


def test_phi_is_partially_shared_as_in_var(tok):
    q = MultiScaleVQVAE(tiny_config(patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), resolution=32 * 2)).quantize
    picked = [list(q.quant_resi.qresi_ls).index(q.quant_resi.for_scale(si, 10)) for si in range(10)]
    assert picked == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # what VAR's PhiPartiallyShared picks (ticks linspace(1/12, 11/12, 4))
    assert len(q.quant_resi.qresi_ls) == 4 and q.quant_resi.qresi_ls[0].ratio == 0.5


def test_next_input_and_teacher_forcing_match_var_semantics(tok):
    idx = tok.encode_indices(images(seed=1))
    q, pn = tok.quantize, tok.config.patch_nums
    # scale 0 by hand: lookup -> bicubic to G -> phi -> add; next input = area-downsample to pn[1]
    h = q.embedding.weight[idx[0]].transpose(1, 2).reshape(2, 8, 1, 1)
    phi = q.quant_resi.qresi_ls[0]
    h = F.interpolate(h, size=(8, 8), mode="bicubic")
    want_f = 0.5 * h + 0.5 * F.conv2d(h, phi.weight, phi.bias, padding=1)
    f0 = tok.empty_fhat(2)
    f1, nxt = tok.next_input(0, f0, idx[0])
    assert float(f0.abs().sum()) == 0  # never in place
    assert torch.allclose(f1, want_f, atol=1e-5)
    assert torch.allclose(nxt, F.interpolate(want_f, size=(2, 2), mode="area").flatten(2).transpose(1, 2), atol=1e-6)
    tf = tok.teacher_forcing_inputs(idx)
    assert tf.shape == (2, sum(p * p for p in pn) - 1, 8) and tf.dtype == torch.float32
    assert torch.allclose(tf[:, :4], nxt, atol=1e-6)
    f, chunks = f0, []
    for si in range(len(pn)):
        f, n = tok.next_input(si, f, idx[si])
        if n is not None:
            assert n.shape == (2, pn[si + 1] ** 2, 8)
            chunks.append(n)
    assert n is None and torch.allclose(torch.cat(chunks, 1), tf, atol=1e-6)
    assert torch.allclose(tok.lookup(idx[2]), q.embedding.weight[idx[2]])


def test_wrong_indices_are_named(tok):
    idx = tok.encode_indices(images())
    with pytest.raises(ValueError, match="scale 1"):
        tok.decode_indices([idx[0], idx[2]] + idx[2:])
    with pytest.raises(ValueError, match="scales"):
        tok.teacher_forcing_inputs(idx[:-1])
    with pytest.raises(ValueError, match="f_hat"):
        tok.decode_fhat(torch.zeros(1, 8, 4, 4))


def test_pil_inputs_of_any_size_and_mode_are_composited_and_resized(tok):
    rgba = Image.new("RGBA", (77, 50), (255, 0, 0, 0))  # fully transparent red -> white
    ims = [rgba, Image.new("L", (40, 90), 128), Image.new("P", (64, 64)), Image.new("RGB", (300, 300), (0, 0, 255))]
    x = tok.prepare(ims)
    assert x.shape == (4, 3, 32, 32)
    assert torch.allclose(x[0], torch.ones_like(x[0]))  # transparent composited onto white
    assert len(tok.encode_indices(ims)[0]) == 4
    assert tok.prepare(torch.zeros(3, 64, 64)).shape == (1, 3, 32, 32)
    with pytest.raises(TypeError):
        tok.prepare("not an image")


def blobs(b=4, r=32, seed=0):
    """White images with one flat-coloured square each (renders in miniature)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.ones(b, 3, r, r)
    for i in range(b):
        y0, x0 = torch.randint(2, r // 2, (2,), generator=g).tolist()
        x[i, :, y0:y0 + r // 3, x0:x0 + r // 3] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


def test_training_pass_learns_and_straight_through():
    torch.manual_seed(0)
    m = MultiScaleVQVAE(tiny_config()).train()
    x = blobs(4, seed=3)
    opt = torch.optim.Adam(m.parameters(), 5e-3)
    errs = []
    for _ in range(15):
        rec, vq, idx, seen = m(x)
        err = F.mse_loss(rec, x)
        opt.zero_grad()
        (err + vq).backward()
        opt.step()
        errs.append(err.item())
    assert len(seen) == len(idx) == 4 and seen[-1].shape == (4 * 64, 8)
    assert m.encoder.conv_in.weight.grad is not None and m.quantize.embedding.weight.grad is not None
    assert m.quantize.quant_resi.qresi_ls[0].weight.grad is not None
    assert errs[-1] < 0.3 * errs[0]


def test_save_and_load_round_trip_and_bad_checkpoints(tok, tmp_path):
    tok.save_pretrained(tmp_path / "ok")
    back = MultiScaleVQVAE.from_pretrained(tmp_path / "ok")
    assert back.config == tok.config
    x = images()
    assert torch.equal(back.decode_indices(tok.encode_indices(x)), tok.decode_indices(tok.encode_indices(x)))
    # config that does not match the tensors
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    cfg["vocab_size"] = 128
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "ok")
    # unknown config field
    cfg["vocab_size"], cfg["bogus"] = 64, 1
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="bogus"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "ok")
    # a pickle named model.safetensors
    tok.save_pretrained(tmp_path / "pk")
    torch.save(tok.state_dict(), tmp_path / "pk" / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "pk")


# ----------------------------------------------------------------------------- VAR importer

def var_state_dict(seed=0):
    """A state dict with the names and shapes of VAR's vae_ch160v4096z32.pth (random values)."""
    shapes = json.loads(VAR_SHAPES.read_text())
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("norm.weight") or k.endswith("norm1.weight") or k.endswith("norm2.weight") or "norm_out.weight" in k:
            sd[k] = torch.ones(s)
        elif len(s) == 4:  # conv: scale for unit-ish activations
            sd[k] = torch.randn(s, generator=g) / (s[1] * s[2] * s[3]) ** 0.5
        else:
            sd[k] = torch.randn(s, generator=g) * 0.02
    return sd


def test_var_published_config_has_var_shapes():
    cfg = TokenizerConfig.var_published()
    assert (cfg.resolution, cfg.ch, cfg.ch_mult, cfg.latent_dim, cfg.vocab_size, cfg.downsample) == \
        (256, 160, (1, 1, 2, 2, 4), 32, 4096, 16)


def test_importer_converts_var_names_and_runs(tmp_path):
    sd = var_state_dict()
    assert "quantize.ema_vocab_hit_SV" in sd and "quantize.quant_resi.qresi_ls.3.weight" in sd
    conv = convert_var_state_dict({"module." + k: v for k, v in sd.items()})
    assert "quantize.ema_vocab_hit_SV" not in conv and len(conv) == len(sd) - 1
    with torch.device("meta"):
        model = MultiScaleVQVAE(TokenizerConfig.var_published())
    from core.checkpoint import validate_state_dict
    validate_state_dict(model, conv)
    model.load_state_dict(conv, strict=True, assign=True)
    model.eval()
    assert torch.equal(model.quantize.embedding.weight, sd["quantize.embedding.weight"])
    # every tensor takes part, at 1/16 of the 256 px cost: the conv nets are resolution-agnostic
    with torch.no_grad():
        f = model.quant_conv(model.encoder(torch.rand(1, 3, 64, 64) * 2 - 1))
        assert f.shape == (1, 32, 4, 4) and torch.isfinite(f).all()
        idx = model.quantize.f_to_indices(torch.randn(1, 32, 16, 16))
        assert [i.shape[1] for i in idx] == [p * p for p in model.config.patch_nums]
        f_hat = model.quantize.indices_to_fhat(idx)
        out = model.decoder(model.post_quant_conv(f_hat[..., :4, :4]))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_importer_errors_name_the_problem():
    sd = var_state_dict()
    bad = dict(sd)
    bad["decoder.conv_in.weight"] = torch.zeros(640, 16, 3, 3)
    with pytest.raises(CheckpointError, match=r"decoder\.conv_in\.weight: got \(640, 16, 3, 3\), expected \(640, 32, 3, 3\)"):
        convert_var_state_dict(bad)
    missing = {k: v for k, v in sd.items() if k != "quantize.embedding.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1 key.*quantize\.embedding\.weight"):
        convert_var_state_dict(missing)
    with pytest.raises(CheckpointError, match="dict of tensors"):
        convert_var_state_dict({"a": 1})


def test_import_file_paths_pth_and_safetensors(tmp_path):
    """The file path of the importer, on a small VAR-layout config (same code path, small tensors)."""
    cfg = tiny_config(patch_size=1, ch=16, ch_mult=(1, 1, 2), resolution=32, using_sa=True)
    src = MultiScaleVQVAE(cfg).state_dict()
    src["quantize.ema_vocab_hit_SV"] = torch.zeros(4, 64)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.items()}, tmp_path / "var.safetensors")
    out = import_var_checkpoint(tmp_path / "var.safetensors", tmp_path / "conv", config=cfg)
    m = MultiScaleVQVAE.from_pretrained(out)
    assert torch.equal(m.quantize.embedding.weight, src["quantize.embedding.weight"])
    torch.save({"state_dict": src}, tmp_path / "var.pth")  # a pickle: refused unopened, with how to convert
    with pytest.raises(CheckpointError, match=r"var\.pth.*never unpickles.*safetensors"):
        import_var_checkpoint(tmp_path / "var.pth", tmp_path / "conv2", config=cfg)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        import_var_checkpoint(tmp_path / "junk.safetensors", tmp_path / "x", config=cfg)


# ----------------------------------------------------------------------------- training / eval CLIs

def make_data(root: Path, n_train=3, n_val=2, views=2):
    from core.cameras import pose_from_spherical
    from core.data.io import write_view
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for o in range(n):
            for v in range(views):
                a = np.full((40, 40, 3), 255, np.uint8)
                y, x = rng.integers(5, 25, 2)
                a[y:y + 12, x:x + 12] = rng.integers(0, 200, 3)
                write_view(root / split / f"o{o}", v, Image.fromarray(a), pose_from_spherical(30 * v, 10, 2.0))
    return root


def test_codebook_monitor_restarts_dead_codes():
    from core.train.tokenizer import CodebookMonitor
    m = MultiScaleVQVAE(tiny_config())
    opt = torch.optim.Adam(m.parameters())
    mon = CodebookMonitor(64, window=1)
    mon.update([torch.zeros(2, 4, dtype=torch.long)])
    pool = [torch.randn(10, 8) * 5]
    before = m.quantize.embedding.weight.detach().clone()
    n = mon.maybe_restart(m, pool, opt)
    w = m.quantize.embedding.weight.detach()
    assert n == 63 and mon.last_usage == pytest.approx(1 / 64)
    assert torch.equal(w[0], before[0]) and not torch.allclose(w[1:], before[1:])
    assert float(torch.cdist(w[1:], pool[0]).min(1).values.max()) < 1.0  # restarted near encoder outputs


def test_train_resume_and_eval_cli(tmp_path):
    from core.eval.tokenizer import main as eval_main
    from core.train.tokenizer import main as train_main
    data = make_data(tmp_path / "data")
    cfg = json.dumps(tiny_config().to_dict())
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--config", cfg, "--batch", "2", "--val-every", "2",
            "--val-images", "2", "--restart-window", "2"]
    assert train_main(args + ["--steps", "3"]) == 0
    st = json.loads((run / "ckpt-latest" / "train_state.json").read_text())
    assert st["step"] == 3 and (run / "ckpt-latest" / "optimizer.safetensors").is_file() and (run / "ckpt-best").is_dir()
    assert train_main(args + ["--steps", "5", "--resume", "--force-schedule"]) == 0
    assert json.loads((run / "ckpt-latest" / "train_state.json").read_text())["step"] == 5
    assert not list(run.glob(".ckpt-*"))  # no temp folders left behind
    assert MultiScaleVQVAE.from_pretrained(run).config == tiny_config()  # the final model sits in --out
    out = tmp_path / "eval.json"
    assert eval_main(["--data", str(data), "--checkpoint", str(run / "ckpt-latest"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 4  # val split only: 2 objects x 2 views
    assert len(res["preview_psnr_per_scale"]) == 4 and 0 < res["codebook_usage"] <= 1
    assert set(res) >= {"psnr", "ssim", "codebook_usage", "preview_psnr_per_scale", "n_images"}
    assert eval_main(["--data", str(tmp_path / "nope"), "--checkpoint", str(run / "ckpt-latest")]) == 2


def test_decoder_finetune_keeps_every_token(tmp_path):
    """--train decoder changes only post_quant_conv + decoder: the codebook, phi and encoder (so
    every image's tokens, and the NVS pairing fingerprint) are bit-identical."""
    from core.nvs.pipeline import tokenizer_fingerprint
    from core.train.tokenizer import main as train_main
    from safetensors.torch import load_file
    data = make_data(tmp_path / "data")
    torch.manual_seed(1)
    base = MultiScaleVQVAE(tiny_config())
    base.save_pretrained(tmp_path / "base")
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--init", str(tmp_path / "base"), "--train", "decoder",
            "--batch", "2", "--val-every", "2", "--val-images", "2", "--steps", "3"]
    assert train_main(args) == 0
    a, b = load_file(str(tmp_path / "base" / "model.safetensors")), load_file(str(run / "ckpt-latest" / "model.safetensors"))
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    tuned = MultiScaleVQVAE.from_pretrained(run / "ckpt-latest")
    assert tokenizer_fingerprint(tuned) == tokenizer_fingerprint(base)
    x = images(2)
    assert all(torch.equal(i, j) for i, j in zip(base.encode_indices(x), tuned.encode_indices(x)))
    assert train_main(["--data", str(data), "--out", str(tmp_path / "r2"), "--init", str(tmp_path / "nope")]) == 2
    assert train_main(args[:-2] + ["--steps", "4", "--resume", "--train", "all", "--force-schedule"]) == 2  # mode
    assert train_main(args[:-2] + ["--steps", "4", "--resume", "--force-schedule"]) == 0


def test_bf16_autocast_training_path_runs_on_cpu(tmp_path, capsys):
    """The autocast path used on GPUs (--precision auto = bf16 on CUDA), run on CPU: finite losses,
    fp32 weights saved. Spelled the old way (--batch-size, --bf16 on): still works, with a note."""
    from core.train.tokenizer import main as train_main
    from safetensors.torch import load_file
    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(run), "--config", json.dumps(tiny_config().to_dict()),
                       "--batch-size", "2", "--steps", "2", "--val-every", "2", "--val-images", "2", "--bf16", "on"]) == 0
    err = capsys.readouterr().err
    assert "--batch-size is deprecated" in err and "--bf16 is deprecated" in err
    state = json.loads((run / "ckpt-latest" / "train_state.json").read_text())
    assert state["precision"] == "bf16" and state["args"]["batch"] == 2
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r.get("loss", 0.0)) for r in rows)
    assert all(t.dtype == torch.float32 for t in load_file(str(run / "ckpt-latest" / "model.safetensors")).values()
               if t.is_floating_point())
