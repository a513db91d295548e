"""3-D-anchored NVS (NVSConfig.guide): the guide prefix and gate, sampling that matches the
teacher-forced forward, the guide as the stream's first frame, the unguided fallback, the
recon/NVS pairing and the guide cache that training reads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh

from core import cameras
from core.checkpoint import CheckpointError
from core.data.io import image_to_tensor, write_meta, write_view
from core.nvs import NVSPipeline, NVSTransformer
from core.nvs.data import PairSampler, TokenObject, build_guides, guide_dir, load_guides
from core.nvs.guide import Guide, lift_guide, recon_fingerprint
from core.nvs.pipeline import check_recon_pair
from core.nvs.sampling import SamplingParams, next_scale_sample
from tests.test_nvs import SRC, TGTS, blob, randomize, small_cfg, tok  # noqa: F401  (tok: fixture)
from tests.test_recon import ball_scene, disc_image, tiny_pipe

GREEDY = SamplingParams(cfg=0.0, temperature=0.0)


def sphere_guide(size=32) -> Guide:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    mesh.visual.vertex_colors = np.where(mesh.vertices[:, 1:2] > 0, [[220, 30, 30, 255]],
                                         [[30, 30, 220, 255]]).astype(np.uint8)
    return Guide(mesh, size)


@pytest.fixture(scope="module")
def guided(tok):
    torch.manual_seed(1)
    return NVSPipeline(randomize(NVSTransformer(small_cfg(tok, copy_gate=True, guide=True)), seed=3), tok)


@pytest.fixture(scope="module")
def handle(guided):
    h = guided.encode_source(blob(), SRC)
    h.guide = sphere_guide(guided.resolution)
    yield h
    h.guide.close()


def inputs(m, tok, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = m.config.num_tokens
    gi = torch.randint(0, 64, (B, L), generator=g)
    return dict(emb=torch.randn(B, 16, generator=g), rel_pose=torch.randn(B, 4, generator=g),
                src_codes=torch.randn(B, L, 8, generator=g), x_tf=torch.randn(B, L - 1, 8, generator=g),
                src_idx=torch.randint(0, 64, (B, L), generator=g), guide_idx=gi, guide_codes=tok.lookup(gi))


def test_the_guide_prefix_conditions_every_target_token_unless_it_is_off(guided, tok):
    m = guided.model
    x = inputs(m, tok)
    base = m(**x)
    other = dict(x, guide_idx=x["guide_idx"].flip(1), guide_codes=x["guide_codes"].flip(1))
    assert (m(**other) - base).abs().amax(-1).min() > 1e-4          # every target token sees the guide
    off = torch.tensor([True, False])
    a, b = m(**x, guide_off=off), m(**other, guide_off=off)
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(a[1], b[1], atol=1e-4)
    drop = torch.tensor([True, False])                               # a dropped source has no guide either
    assert torch.allclose(m(**x, drop=drop)[0], m(**other, drop=drop)[0], atol=1e-5)
    with pytest.raises(ValueError, match="guide model needs guide_idx"):
        m(**dict(x, guide_idx=None))


def test_greedy_sampling_with_the_guide_is_the_teacher_forced_argmax(guided, tok, handle):
    """The prefix layout the sampler caches ([source][guide]) is the one training runs."""
    m = guided.model
    batch = guided.prepare(handle, None, TGTS[:1], GREEDY)
    assert batch.guide_idx is not None and batch.guide_idx.shape == (1, m.config.num_tokens)
    idxs = [None] * m.config.num_scales
    for si, _, idx in next_scale_sample(m, tok, batch.cond, None, lambda: guided.prefix_kv(batch), GREEDY,
                                        src_idx=batch.src_idx, guide_idx=batch.guide_idx):
        idxs[si] = idx
    rel = torch.from_numpy(cameras.relative_pose(SRC, TGTS[0]))[None]
    with torch.no_grad():
        logits = m(handle.embedding, rel, handle.codes, tok.teacher_forcing_inputs(idxs),
                   drop=torch.tensor([False]), src_idx=torch.cat(handle.indices, 1),
                   guide_idx=batch.guide_idx, guide_codes=batch.guide_codes, guide_off=torch.tensor([False]))
    assert torch.equal(logits.argmax(-1), torch.cat(idxs, 1))


def test_an_open_guide_gate_copies_the_guide_token_by_token(tok, handle):
    m = NVSTransformer(small_cfg(tok, guide=True)).eval()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
        m.guide_gate.bias.fill_(20.0)
    p = NVSPipeline(m, tok)
    h = p.encode_source(blob(), SRC)
    h.guide = handle.guide
    batch = p.prepare(h, None, TGTS[1:2], GREEDY)
    out = [idx for _, _, idx in next_scale_sample(m, tok, batch.cond, None, lambda: p.prefix_kv(batch), GREEDY,
                                                  guide_idx=batch.guide_idx)]
    assert torch.equal(torch.cat(out, 1), batch.guide_idx)


def test_stream_shows_the_guide_first_then_refines_and_ends_on_generate(guided, handle):
    frames = list(guided.stream(handle, None, TGTS[0], seed=4))
    assert [f.scale for f in frames] == list(range(0, guided.num_scales + 1))
    assert frames[0].is_guide and not frames[0].is_final and frames[-1].is_final
    assert np.array_equal(np.asarray(frames[0].image), np.asarray(handle.guide.render(TGTS[0]).image))
    assert np.array_equal(np.asarray(frames[-1].image), np.asarray(guided.generate(handle, None, [TGTS[0]], seed=4)[0]))
    assert [f.scale for f in guided.stream(handle, None, TGTS[0], preview_scales=[2])] == [2, 3]


def test_no_guide_falls_back_to_the_nulled_guide_path_with_a_note(guided, tok):
    h = guided.encode_source(blob(), SRC)            # no recon: no guide, nothing to say
    frames = list(guided.stream(h, None, TGTS[0], seed=2))
    assert frames[0].scale == 1 and frames[-1].is_final and not frames[-1].note
    assert guided.prepare(h, None, TGTS[:1], GREEDY).guide_idx is None
    lifting = NVSPipeline(guided.model, tok, recon=tiny_pipe())
    h = lifting.encode_source(disc_image(colour=(255, 255, 255)), SRC)   # a photo with no object: no lift
    assert h.guide is None and "no 3-D guide" in h.guide_note
    frames = list(lifting.stream(h, None, TGTS[0], seed=2))
    assert frames[0].scale == 1 and all(f.note == h.guide_note for f in frames) and frames[-1].is_final


def test_an_unguided_model_still_streams_the_guide_first_and_ignores_it_after(tok):
    torch.manual_seed(0)
    p = NVSPipeline(randomize(NVSTransformer(small_cfg(tok, copy_gate=True))), tok)
    h = p.encode_source(blob(), SRC)
    plain = list(p.stream(h, None, TGTS[1], seed=7))
    h.guide = sphere_guide(p.resolution)
    withg = list(p.stream(h, None, TGTS[1], seed=7))
    assert withg[0].is_guide and len(withg) == len(plain) + 1
    assert np.array_equal(np.asarray(withg[-1].image), np.asarray(plain[-1].image))
    h.guide.close()


class BallRecon:
    """A reconstruction stand-in: every photo lifts to the analytic ball of test_recon."""
    model = torch.nn.Linear(2, 2)

    def reconstruct(self, image, w2c, fov_deg):
        return ball_scene()


def test_lift_guide_gives_a_guide_or_a_note_for_a_photo_it_cannot_lift():
    g, note = lift_guide(BallRecon(), disc_image(), SRC, 40.0, 32)
    assert note == "" and g.render(TGTS[0]).alpha.max() == 255
    g.close()
    white = disc_image(colour=(255, 255, 255))
    g, note = lift_guide(tiny_pipe(), white, SRC, 40.0, 32)
    assert g is None and "no 3-D guide" in note and "no object" in note


def test_a_guide_model_refuses_a_reconstruction_it_was_not_trained_with(tok):
    a, b = tiny_pipe(seed=0), tiny_pipe(seed=1)
    cfg = small_cfg(tok, guide=True, recon_hash=recon_fingerprint(a))
    check_recon_pair(cfg, a)
    with pytest.raises(CheckpointError, match="mismatched reconstruction/NVS pair") as e:
        NVSPipeline(NVSTransformer(cfg), tok, recon=b)
    assert cfg.recon_hash in str(e.value) and recon_fingerprint(b) in str(e.value)


def test_guide_cache_holds_a_lift_per_source_view_and_feeds_the_pair_sampler(tmp_path, tok):
    root = tmp_path / "data"
    obj = root / "train" / "ball"
    obj.mkdir(parents=True)
    poses = [cameras.pose_from_spherical(az, 20, 2.0) for az in (0, 90, 180, 270)]
    for i, w in enumerate(poses):
        write_view(obj, i, disc_image(32), w)
    write_meta(obj, {"fov_deg": 40.0})
    out = guide_dir(tmp_path / "cache", "tok", "rec", False, "train")
    r = build_guides(root, "train", tok, BallRecon(), out, per_object=2, progress=False)
    assert r == {"objects": 1, "failed_lifts": 0}
    L = sum(p * p for p in tok.config.patch_nums)
    gs = load_guides(out)["ball"]
    assert len(gs.usable()) == 2 and gs.tokens.shape == (2, 4, L)
    # the cached tokens are the lift of the source view, rendered at the target view and tokenised
    s = gs.usable()[0]
    g, _ = lift_guide(BallRecon(), disc_image(32), poses[s], 40.0, tok.config.resolution)
    want = torch.cat(tok.encode_indices(image_to_tensor(g.render(poses[3]).image)[None]), 1)[0].numpy()
    g.close()
    assert np.array_equal(gs.of(s, 3), want)
    assert build_guides(root, "train", tok, BallRecon(), out, progress=False)["objects"] == 0   # resumes
    objs = [TokenObject("ball", np.zeros((4, L), np.int16), np.stack(poses).astype(np.float32),
                        np.zeros((4, 8, 8, 3), np.uint8), None, 40.0, ["000", "001", "002", "003"]),
            TokenObject("no_guides", np.zeros((4, L), np.int16), np.stack(poses).astype(np.float32),
                        np.zeros((4, 8, 8, 3), np.uint8), None, 40.0, ["000", "001", "002", "003"])]
    ps = PairSampler(objs, seed=0, guides=load_guides(out))
    assert [o.name for o in ps.objects] == ["ball"]                  # sources with a lift only
    moved = TokenObject("ball", objs[0].tokens, objs[0].poses, objs[0].small, None, 40.0, ["001", "000", "002", "003"])
    with pytest.raises(ValueError, match="with cached guides"):      # views renamed since the guides were built
        PairSampler([moved], seed=0, guides=load_guides(out))
    pairs = ps.pairs(8)
    assert {s for _, s, _ in pairs} <= set(gs.usable())
    b = ps.batch(pairs)
    assert torch.equal(b["guide"], torch.from_numpy(np.stack([gs.of(s, t) for _, s, t in pairs]).astype(np.int64)))


def test_guided_training_from_an_unguided_model_then_eval_with_guide_scores(tmp_path, tok, monkeypatch, capsys):
    """--guide --init <unguided run>: the guide cache is built from --recon's lifts, the model trains and
    resumes only as a guide model with that reconstruction; the eval scores the guide beside the model."""
    from core.eval.nvs import main as eval_main
    from core.recon.pipeline import ReconPipeline
    from core.train.nvs import main as train_main
    from tests.test_nvs import make_dataset
    monkeypatch.setattr(ReconPipeline, "reconstruct", lambda self, *a, **k: ball_scene())  # every photo lifts
    make_dataset(tmp_path / "data")
    tok.save_pretrained(tmp_path / "tokenizer")
    tiny_pipe(seed=0).save_pretrained(tmp_path / "recon")
    tiny_pipe(seed=1).save_pretrained(tmp_path / "other_recon")
    base = ["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tokenizer"), "--cache",
            str(tmp_path / "cache"), "--batch", "2", "--depth", "1", "--width", "32", "--heads", "2",
            "--embed-dim", "16", "--log-every", "1", "--val-every", "100"]
    assert train_main(base + ["--out", str(tmp_path / "plain"), "--steps", "1"]) == 0
    guided = base + ["--out", str(tmp_path / "run"), "--guide", "--recon", str(tmp_path / "recon")]
    assert train_main(guided + ["--init", str(tmp_path / "plain"), "--steps", "2", "--ckpt-every", "1"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["guide"] is True and cfg["recon_hash"] == recon_fingerprint(ReconPipeline.from_pretrained(tmp_path / "recon"))
    assert "init:" in capsys.readouterr().out
    assert any((tmp_path / "cache").glob("*/guides-*/train/*.npz"))
    more = ["--resume", "--steps", "3", "--force-schedule"]
    capsys.readouterr()
    assert train_main(guided + more + ["--no-guide"]) == 2
    assert "was trained with guide=True" in capsys.readouterr().err
    assert train_main(base + ["--out", str(tmp_path / "run"), "--guide", "--recon", str(tmp_path / "other_recon")]
                      + more) == 2
    assert "trained on the guides of reconstruction" in capsys.readouterr().err
    assert not any((tmp_path / "cache").glob(f"*/guides-{recon_fingerprint(tiny_pipe(seed=1))}"))  # refused first
    assert train_main(base + ["--out", str(tmp_path / "run"), "--recon", str(tmp_path / "recon")] + more) == 0
    capsys.readouterr()
    assert train_main(base + ["--out", str(tmp_path / "x"), "--init", str(tmp_path / "run"), "--steps", "1"]) == 2
    assert "is a guide model" in capsys.readouterr().err and not (tmp_path / "x" / "ckpt-latest").exists()
    assert json.loads((tmp_path / "run" / "ckpt-latest" / "train_state.json").read_text())["step"] == 3
    out = tmp_path / "eval.json"
    ev = ["--data", str(tmp_path / "data"), "--checkpoint", str(tmp_path / "run"), "--tokenizer",
          str(tmp_path / "tokenizer"), "--out", str(out), "--max-objects", "1"]
    assert eval_main(ev + ["--recon-checkpoint", str(tmp_path / "recon")]) == 0
    res = json.loads(out.read_text())
    for k in ("psnr", "silhouette_iou", "baseline_copy_silhouette_iou", "baseline_scaled_copy_silhouette_iou",
              "guide_psnr", "guide_ssim", "guide_silhouette_iou"):
        assert k in res and 0 <= res[k] < 100, k
    assert res["guide_failures"] == 0 and res["settings"]["guided_model"] is True
    capsys.readouterr()
    assert eval_main(ev + ["--recon-checkpoint", str(tmp_path / "other_recon")]) == 2
    assert "mismatched reconstruction/NVS pair" in capsys.readouterr().err
    assert eval_main(ev + ["--no-guide"]) == 2


def test_recon_eval_lifts_from_the_input_plus_generated_views(tmp_path, tok, monkeypatch):
    """--with-generated-views N: N NVS views at the input's elevation and distance, spread in azimuth,
    join the input in one lift; the JSON says how many; more views than the model takes is refused."""
    from core.eval.recon import generated_cameras
    from core.eval.recon import main as eval_main
    from core.recon.pipeline import ReconPipeline
    from core.recon.toydata import write_dataset
    data = write_dataset(tmp_path / "toy", n_train=1, n_val=1, size=32, n_views=4)
    cams = generated_cameras(SRC, 3)
    got = [cameras.spherical_from_pose(c) for c in cams]
    az0, el0, r0 = cameras.spherical_from_pose(SRC)
    assert np.allclose([(a - az0) % 360 for a, _, _ in got], [90, 180, 270], atol=1e-3)
    assert np.allclose([e for _, e, _ in got], el0, atol=1e-3) and np.allclose([r for _, _, r in got], r0, atol=1e-4)
    tiny_pipe(seed=0).save_pretrained(tmp_path / "recon")
    NVSTransformer(small_cfg(tok)).save_pretrained(tmp_path / "nvs")
    tok.save_pretrained(tmp_path / "tokenizer")
    seen = []
    real = ReconPipeline.reconstruct
    monkeypatch.setattr(ReconPipeline, "reconstruct",
                        lambda self, images, w2cs, **k: seen.append(len(images)) or real(self, images, w2cs, **k))
    out = tmp_path / "eval.json"
    args = ["--data", str(data), "--checkpoint", str(tmp_path / "recon"), "--out", str(out), "--mc-resolution", "32",
            "--size", "32", "--nvs-checkpoint", str(tmp_path / "nvs")]
    assert eval_main(args + ["--with-generated-views", "3"]) == 0
    res = json.loads(out.read_text())
    assert seen == [4] and res["generated_views"] == 3 and res["seconds_generate"] > 0 and np.isfinite(res["psnr"])
    with pytest.raises(SystemExit):   # 1 input + 8 generated > max_views 8
        eval_main(args + ["--with-generated-views", "8"])


def test_the_app_backend_lifts_the_photo_once_and_streams_its_guide_first(tok, tmp_path):
    """With both models loaded, a camera move's first frame is the guide (what a still-moving camera
    gets from the 3D view), then the sparse previews; the photo is lifted once, not per move."""
    from viewer.backend import Backend, SessionStore
    torch.manual_seed(0)
    nvs = NVSPipeline(randomize(NVSTransformer(small_cfg(tok, copy_gate=True))), tok)
    b = Backend(nvs=nvs, recon=BallRecon(), sessions=SessionStore(tmp_path / "sessions"))
    assert nvs.recon is not None and b.sparse_previews()[0] == 0
    s = b.sessions.new()
    b.set_source(s, disc_image(64))
    frames = list(b.stream_view(s, 60, 20, 2.0, preview_scales=b.sparse_previews()))
    assert frames[0].is_guide and frames[0].image.size == (nvs.resolution,) * 2 and frames[-1].is_final
    assert [f.scale for f in frames] == b.sparse_previews() and s.encoded.guide is not None
    first = s.encoded
    list(b.stream_view(s, 90, 20, 2.0, preview_scales=b.sparse_previews()))
    assert s.encoded is first                        # lifted once per photo, not per camera move


def test_benchmark_baselines_draw_a_guide_models_own_views(guided, handle):
    """core.bench nvs's no-KV-cache and re-encoded-prefix paths lay out the guide prefix as the pipeline
    does (with CFG's unconditional rows), so its speed ratios compare the same work."""
    from core.bench.nvs import sample_baseline
    sp = SamplingParams(seed=3, cfg=2.0, top_k=20, top_p=0.9)
    a = guided.generate(handle, None, TGTS[:2], sp)
    for use_cache in (False, True):
        b = guided.decode(sample_baseline(guided, guided.prepare(handle, None, TGTS[:2], sp), sp, use_cache=use_cache))
        assert all(np.abs(np.asarray(x, int) - np.asarray(y, int)).max() <= 1 for x, y in zip(a, b))


def test_no_opengl_means_no_guide_with_a_note_and_no_thread_left(monkeypatch):
    import threading
    import core.nvs.guide as guide_mod

    from core.data.render import NoGLError

    def no_egl(*a, **k):
        raise NoGLError("cannot create a headless EGL OpenGL context (test); needs Mesa's libEGL")
    monkeypatch.setattr(guide_mod, "_make_renderer", no_egl)
    before = threading.active_count()
    g, note = lift_guide(BallRecon(), disc_image(), SRC, 40.0, 32)
    assert g is None and "no 3-D guide on this machine" in note
    import time
    time.sleep(0.1)
    assert threading.active_count() <= before
