"""Next-scale NVS: masks, KV cache vs full recompute, CFG branch, streaming, seeds, prefix
reuse, bad input, checkpoints, training/eval CLIs, the ArchonView importer, open_clip."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core import cameras
from core.checkpoint import CheckpointError
from core.data.io import image_to_tensor, read_view, tensor_to_image, write_meta, write_view, zoom_images
from core.nvs import Frame, NVSConfig, NVSPipeline, NVSTransformer
from core.nvs.pipeline import tokenizer_fingerprint
from core.nvs.sampling import SamplingParams
from core.tokenizer import MultiScaleVQVAE, TokenizerConfig

TOK_CFG = dict(resolution=32, patch_size=4, ch=16, ch_mult=(1, 2), norm_groups=8, vocab_size=64, latent_dim=8,
               patch_nums=(1, 2, 4), num_res_blocks=1)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return MultiScaleVQVAE(TokenizerConfig(**TOK_CFG)).eval()


def small_cfg(tok, **kw) -> NVSConfig:
    base = dict(depth=2, width=32, num_heads=2, vocab_size=64, latent_dim=8, patch_nums=(1, 2, 4), resolution=32,
                embed_dim=16, cnn_width=8, cnn_resolution=16, tokenizer_hash=tokenizer_fingerprint(tok))
    base.update(kw)
    return NVSConfig(**base)


def randomize(model: NVSTransformer, seed=0) -> NVSTransformer:
    """VAR's init makes gates ~0 and the head tiny: give every weight real values so tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() < 2 else 1.0 / math.sqrt(p.shape[-1])))
    return model.eval()


@pytest.fixture(scope="module")
def pipe(tok):
    torch.manual_seed(0)
    return NVSPipeline(randomize(NVSTransformer(small_cfg(tok, copy_gate=True))), tok)  # every path with the gate


def blob(color=(200, 40, 40), size=48) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    a = np.asarray(img).copy()
    a[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = color
    return Image.fromarray(a)


SRC = cameras.pose_from_spherical(0, 20, 2.0)
TGTS = [cameras.pose_from_spherical(az, 20, 2.0) for az in (40, 90, 180)]


def arr(img):
    return np.asarray(img, dtype=np.int16)


# ----------------------------------------------------------------------------- model
def test_block_causal_mask_and_bidirectional_prefix(tok):
    m = randomize(NVSTransformer(small_cfg(tok)))
    B, L = 1, m.config.num_tokens
    emb, rel = torch.randn(B, 16), torch.randn(B, 4)
    codes, x_tf = torch.randn(B, L, 8), torch.randn(B, L - 1, 8)
    base = m(emb, rel, codes, x_tf)
    # a change in the last target scale's inputs leaves the earlier scales' logits unchanged
    x2 = x_tf.clone()
    x2[:, -16:] += 1.0
    out = m(emb, rel, codes, x2)
    bg = m.begin_ends[-1][0]
    assert torch.allclose(out[:, :bg], base[:, :bg], atol=1e-5)
    assert not torch.allclose(out[:, bg:], base[:, bg:], atol=1e-3)
    # the prefix is bidirectional: its last token changes the first token's keys
    cp = m.source_condition(emb)
    kv1 = m.encode_prefix(m.embed_prefix(codes), cp)
    c2 = codes.clone()
    c2[:, -1] += 1.0
    kv2 = m.encode_prefix(m.embed_prefix(c2), cp)
    assert not torch.allclose(kv1[-1][0][:, :, 0], kv2[-1][0][:, :, 0], atol=1e-4)


def test_dropped_samples_ignore_condition_and_prefix(tok):
    m = randomize(NVSTransformer(small_cfg(tok)))
    L = m.config.num_tokens
    x_tf = torch.randn(2, L - 1, 8)
    a = m(torch.randn(2, 16), torch.randn(2, 4), torch.randn(2, L, 8), x_tf, drop=torch.tensor([True, False]))
    b = m(torch.randn(2, 16), torch.randn(2, 4), torch.randn(2, L, 8), x_tf, drop=torch.tensor([True, False]))
    assert torch.allclose(a[0], b[0], atol=1e-5)      # unconditional: embedding, pose and prefix all nulled
    assert not torch.allclose(a[1], b[1], atol=1e-3)
    m.train()  # per-sample dropout in training: some samples nulled at rate ~cond_drop_rate
    m.config.cond_drop_rate = 0.5
    torch.manual_seed(0)
    emb, rel, codes = torch.randn(64, 16), torch.randn(64, 4), torch.randn(64, L, 8)
    out = m(emb, rel, codes, torch.zeros(64, L - 1, 8))
    ref = m(emb, rel, codes, torch.zeros(64, L - 1, 8), drop=torch.ones(64, dtype=torch.bool))
    nulled = torch.isclose(out, ref, atol=1e-5).flatten(1).all(1).float().mean().item()
    assert 0.2 < nulled < 0.8


def test_shared_prefix_forward_equals_one_prefix_per_target(pipe):
    """k targets of one source share its prefix pass: same logits as the source repeated k times."""
    m, tok = pipe.model, pipe.tok
    L, C = m.config.num_tokens, m.config.latent_dim
    g = torch.Generator().manual_seed(0)
    emb, codes = torch.randn(2, m.config.embed_dim, generator=g), torch.randn(2, L, C, generator=g)
    rel, x_tf = torch.randn(6, 4, generator=g), torch.randn(6, L - 1, C, generator=g)
    src = torch.randint(m.config.vocab_size, (2, L), generator=g)
    drop = torch.tensor([False, True])
    with torch.no_grad():
        shared = m(emb, rel, codes, x_tf, drop=drop, targets_per_source=3, src_idx=src)
        each = m(emb.repeat_interleave(3, 0), rel, codes.repeat_interleave(3, 0), x_tf, drop=drop.repeat_interleave(3),
                 src_idx=src.repeat_interleave(3, 0))
    assert torch.allclose(shared, each, atol=1e-5)
    with pytest.raises(ValueError, match="targets per source"):
        m(emb, rel[:5], codes, x_tf[:5], targets_per_source=3, src_idx=src)
    with pytest.raises(ValueError, match="src_idx"):
        m(emb, rel, codes, x_tf, targets_per_source=3)


def test_truncated_forward_equals_the_first_scales_of_the_full_one(pipe):
    """scales=s (coarse-step training) gives exactly the full forward's logits of the first s scales:
    block-causal attention means later scales never reach earlier ones."""
    m = pipe.model
    L, C = m.config.num_tokens, m.config.latent_dim
    g = torch.Generator().manual_seed(1)
    emb, codes = torch.randn(2, m.config.embed_dim, generator=g), torch.randn(2, L, C, generator=g)
    rel, x_tf = torch.randn(4, 4, generator=g), torch.randn(4, L - 1, C, generator=g)
    src, drop = torch.randint(m.config.vocab_size, (2, L), generator=g), torch.tensor([False, True])
    with torch.no_grad():
        full = m(emb, rel, codes, x_tf, drop=drop, targets_per_source=2, src_idx=src)
        for s in (1, 3, m.config.num_scales):
            part = m(emb, rel, codes, x_tf, drop=drop, targets_per_source=2, src_idx=src, scales=s)
            T = m.begin_ends[s - 1][1]
            assert part.shape == (4, T, m.config.vocab_size) and torch.allclose(part, full[:, :T], atol=1e-5)
    with pytest.raises(ValueError, match="scales must be in"):
        m(emb, rel, codes, x_tf, targets_per_source=2, src_idx=src, scales=m.config.num_scales + 1)


def test_teacher_forcing_matches_cached_sampling(pipe):
    """Greedy sampling with the KV cache picks argmax of the teacher-forced logits at every scale."""
    m, tok = pipe.model, pipe.tok
    h = pipe.encode_source(blob(), SRC)
    from core.nvs.sampling import next_scale_sample
    greedy = SamplingParams(cfg=0, temperature=0.0)
    batch = pipe.prepare(h, None, TGTS[:1], greedy)
    src = torch.cat(h.indices, 1)
    idx = [i for _, _, i in next_scale_sample(m, tok, batch.cond, None, lambda: pipe.prefix_kv(batch), greedy,
                                              src_idx=src)]
    rel = torch.from_numpy(cameras.relative_pose(SRC, TGTS[0]))[None]
    with torch.no_grad():
        logits = m(h.embedding, rel, h.codes, tok.teacher_forcing_inputs(idx), src_idx=src)
    assert torch.equal(logits.argmax(-1), torch.cat(idx, 1))


def test_copy_gate_adds_to_the_source_token_and_never_in_the_unconditional_branch(tok):
    m = randomize(NVSTransformer(small_cfg(tok, copy_gate=True)))
    L = m.config.num_tokens
    g = torch.Generator().manual_seed(1)
    emb, rel, codes = torch.randn(2, 16, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, L, 8, generator=g)
    x_tf, src = torch.randn(2, L - 1, 8, generator=g), torch.randint(64, (2, L), generator=g)
    drop = torch.tensor([False, True])
    with torch.no_grad():
        out = m(emb, rel, codes, x_tf, drop=drop, src_idx=src)
        m.copy_gate.bias += 100.0
        boosted = m(emb, rel, codes, x_tf, drop=drop, src_idx=src)
    assert torch.equal(boosted[0].argmax(-1), src[0])                  # conditional row copies the source
    assert torch.allclose(boosted[1], out[1])                            # unconditional row: no source, no copy
    diff = boosted[0] - out[0]
    assert torch.allclose(diff.sum(-1), torch.full((L,), 100.0)) and torch.allclose(diff.max(-1).values, diff.sum(-1))
    assert NVSTransformer(small_cfg(tok, copy_gate=True)).copy_gate.weight.abs().sum() == 0  # starts as the plain model


def test_open_copy_gate_reproduces_the_source_at_zero_pose(tok):
    """Greedy sampling with a wide-open gate at the source camera returns the tokenizer's own
    reconstruction of the source: the gate is wired to the right scale and position."""
    m = randomize(NVSTransformer(small_cfg(tok, copy_gate=True)))
    with torch.no_grad():
        m.copy_gate.bias += 1e4
    p = NVSPipeline(m, tok)
    h = p.encode_source(blob(), SRC)
    out = p.generate(h, None, [SRC, TGTS[0]], seed=0, cfg=3.0, temperature=0.0)
    ref = p.decode(tok.quantize.indices_to_fhat(h.indices))[0]
    assert np.array_equal(arr(out[0]), arr(ref)) and np.array_equal(arr(out[1]), arr(ref))


def test_kv_cache_equals_full_recompute_and_prefix_reuse(pipe):
    """The benchmark's baselines (no KV cache; prefix re-encoded) draw the pipeline's own views."""
    from core.bench.nvs import sample_baseline
    sp = SamplingParams(seed=3, cfg=2.0, top_k=20, top_p=0.9)
    h = pipe.encode_source(blob(), SRC)
    a = pipe.generate(h, None, TGTS[:2], sp)
    batch = pipe.prepare(h, None, TGTS[:2], sp)
    b = pipe.decode(sample_baseline(pipe, batch, sp, use_cache=False))
    batch = pipe.prepare(blob(), SRC, TGTS[:2], sp)
    c = pipe.decode(sample_baseline(pipe, batch, sp, use_cache=True))
    for x, y, z in zip(a, b, c):
        assert np.abs(arr(x) - arr(y)).max() <= 1 and np.abs(arr(x) - arr(z)).max() <= 1


def test_no_cache_baseline_caches_nothing(pipe, monkeypatch):
    """The benchmark's no-KV-cache path re-runs the source prefix at every scale (its cache is a KV
    cache too); the cached path runs it never (the handle holds it) and the null prefix once."""
    from core.bench.nvs import sample_baseline
    h = pipe.encode_source(blob(), SRC)
    pipe.set_autocast(pipe.autocast)  # drops the cached null prefix
    calls = []
    real = pipe.model.encode_prefix
    monkeypatch.setattr(pipe.model, "encode_prefix", lambda *a, **k: calls.append(1) or real(*a, **k))
    pipe.generate(h, None, TGTS[:1], cfg=2.0)
    assert len(calls) == 1  # the null (unconditional) prefix, cached for good afterwards
    calls.clear()
    sp = SamplingParams(cfg=2.0)
    sample_baseline(pipe, pipe.prepare(h, None, TGTS[:1], sp), sp, use_cache=False)
    assert len(calls) == 2 * pipe.num_scales  # source and null prefix, at every scale


def test_seeded_reproducible_and_batch_invariant(pipe):
    h = pipe.encode_source(blob(), SRC)
    a = pipe.generate(h, None, TGTS, seed=7)
    b = pipe.generate(h, None, TGTS, seed=7)
    assert all(np.array_equal(arr(x), arr(y)) for x, y in zip(a, b))
    c = pipe.generate(h, None, TGTS, seed=8)
    assert any(not np.array_equal(arr(x), arr(y)) for x, y in zip(a, c))
    single = pipe.generate(h, None, [TGTS[1]], seed=7)[0]
    assert np.abs(arr(single) - arr(a[1])).mean() < 1.0  # each target draws from its own seeded generator


def test_stream_previews_and_final_equals_generate(pipe):
    h = pipe.encode_source(blob(), SRC)
    frames = list(pipe.stream(h, None, TGTS[0], seed=5, cfg=1.5))
    S = pipe.num_scales
    assert [f.scale for f in frames] == list(range(1, S + 1)) and all(isinstance(f, Frame) for f in frames)
    assert [f.is_final for f in frames] == [False] * (S - 1) + [True]
    assert all(f.num_scales == S and f.image.size == (32, 32) for f in frames)
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(frames, frames[1:]))
    final = pipe.generate(h, None, [TGTS[0]], seed=5, cfg=1.5)[0]
    assert np.array_equal(arr(frames[-1].image), arr(final))
    # a PIL source streams the same as its handle
    assert np.array_equal(arr(list(pipe.stream(blob(), SRC, TGTS[0], seed=5, cfg=1.5))[-1].image), arr(final))
    # only some scales decoded; the last always is
    sub = list(pipe.stream(h, None, TGTS[0], seed=5, cfg=1.5, preview_scales=[1]))
    assert [f.scale for f in sub] == [1, S] and np.array_equal(arr(sub[-1].image), arr(final))
    # cancel stops early
    n = []
    out = list(pipe.stream(h, None, TGTS[0], seed=5, cancel=lambda: len(n) >= 1 or n.append(1)))
    assert len(out) < S


def test_cfg_changes_output_and_filters(pipe):
    h = pipe.encode_source(blob(), SRC)
    a = pipe.generate(h, None, TGTS[:1], seed=1, cfg=0.0, temperature=0.0)[0]
    b = pipe.generate(h, None, TGTS[:1], seed=1, cfg=4.0, temperature=0.0)[0]
    assert not np.array_equal(arr(a), arr(b))


def reference_probs(logits, top_k, top_p, temp):
    """Top-k / top-p by the book, one token at a time: the sampler's oracle."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    keep = order[:top_k] if top_k else order
    z = [math.exp(logits[i] / temp) for i in keep]
    probs = [v / sum(z) for v in z]
    out, mass = [0.0] * len(logits), 0.0
    for i, q in zip(keep, probs):
        if top_p and mass > top_p:
            break
        out[i], mass = q, mass + q
    total = sum(out)
    return torch.tensor([v / total for v in out])


@pytest.mark.parametrize("top_k,top_p,temp", [(0, 0.0, 1.0), (2, 0.0, 1.0), (0, 0.5, 1.0), (5, 0.0, 1.0),
                                           (0, 0.8, 1.0), (6, 0.9, 0.7)])
def test_sampler_draws_from_the_top_k_top_p_distribution(top_k, top_p, temp):
    from core.nvs.sampling import sample_tokens
    logits = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]
    want = reference_probs(logits, top_k, top_p, temp)
    n = 40000
    got = sample_tokens(torch.tensor(logits).expand(1, n, -1), [torch.Generator().manual_seed(0)], top_k, top_p, temp)
    freq = torch.bincount(got[0], minlength=8).float() / n
    assert torch.allclose(freq, want, atol=0.01), (freq, want)
    assert (freq[want == 0] == 0).all()  # filtered tokens are never drawn


def test_value_sort_sampler_draws_the_same_tokens_as_an_argsort():
    """The sampler sorts values only and finds the drawn token by value: with untied logits it
    picks exactly what the argsort-and-gather draw picks from the same uniforms."""
    from core.nvs.sampling import sample_tokens
    logits = torch.randn(3, 40, 64, generator=torch.Generator().manual_seed(5)) * 3
    for top_k, top_p, temp in ((0, 0.0, 1.0), (20, 0.9, 1.0), (50, 0.5, 0.7)):
        got = sample_tokens(logits, [torch.Generator().manual_seed(i) for i in range(3)], top_k, top_p, temp)
        srt, idx = (logits / temp).sort(-1, descending=True)
        if top_k:
            srt, idx = srt[..., :top_k], idx[..., :top_k]
        p = srt.softmax(-1)
        if top_p:
            p = p * ((p.cumsum(-1) - p) <= top_p)
        cdf = p.cumsum(-1)
        u = torch.stack([torch.rand(40, generator=torch.Generator().manual_seed(i)) for i in range(3)])
        j = torch.searchsorted(cdf, (u * cdf[..., -1])[..., None].contiguous()).clamp_max(cdf.shape[-1] - 1)
        assert torch.equal(got, idx.gather(-1, j)[..., 0])


def test_kv_cache_writes_in_place_truncates_and_refuses_overflow():
    from core.nvs.model import KVCache
    k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    c = KVCache(k, v, capacity=9)
    k2, v2 = c.append(torch.ones(2, 4, 3, 8), torch.zeros(2, 4, 3, 8))
    assert k2.shape[2] == 8 and torch.equal(k2[:, :, :5], k) and torch.equal(v2[:, :, 5:], torch.zeros(2, 4, 3, 8))
    assert k2.data_ptr() == c.k.data_ptr()  # a view of the one buffer, not a copy
    with pytest.raises(ValueError, match="KV cache full"):
        c.append(torch.ones(2, 4, 2, 8), torch.ones(2, 4, 2, 8))
    assert c.truncate().append(torch.ones(2, 4, 4, 8), torch.ones(2, 4, 4, 8))[0].shape[2] == 9


# ----------------------------------------------------------------------------- bad input
def test_bad_cameras_embeddings_and_pairs(pipe, tok):
    bad = SRC.copy()
    bad[0, 0] = np.nan
    with pytest.raises(cameras.CameraError, match="target_w2c"):
        pipe.generate(blob(), SRC, [bad])
    with pytest.raises(cameras.CameraError, match="source_w2c"):
        pipe.encode_source(blob(), np.zeros((3, 4)))
    for r in (0.5, 1e6):  # inside the object's bounding sphere / far beyond any trained pose
        with pytest.raises(cameras.CameraError, match=r"target_w2c\[0\]: camera distance"):
            pipe.generate(blob(), SRC, [cameras.pose_from_spherical(30, 10, r)])
    with pytest.raises(ValueError, match="embedding"):
        pipe.encode_source(blob(), SRC, embedding=np.zeros(5, np.float32))
    other = MultiScaleVQVAE(TokenizerConfig(**{**TOK_CFG, "vocab_size": 32}))
    with pytest.raises(CheckpointError, match="vocab_size"):
        NVSPipeline(pipe.model, other)
    torch.manual_seed(1)
    retrained = MultiScaleVQVAE(TokenizerConfig(**TOK_CFG))
    with pytest.raises(CheckpointError, match="fingerprint"):
        NVSPipeline(pipe.model, retrained)


def test_checkpoint_roundtrip(tmp_path, pipe, tok):
    pipe.model.save_pretrained(tmp_path / "nvs")
    tok.save_pretrained(tmp_path / "tokenizer")
    p2 = NVSPipeline.from_pretrained(tmp_path / "nvs")  # finds the sibling tokenizer folder
    a = pipe.generate(blob(), SRC, TGTS[:1], seed=2)[0]
    b = p2.generate(blob(), SRC, TGTS[:1], seed=2)[0]
    assert np.array_equal(arr(a), arr(b))
    cfg = json.loads((tmp_path / "nvs" / "config.json").read_text())
    cfg["width"] = 64
    (tmp_path / "nvs" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        NVSTransformer.from_pretrained(tmp_path / "nvs")


# ----------------------------------------------------------------------------- CLIs
def make_dataset(root, n_train=3, n_val=2, views=4, radii=(2.0,)):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for o in range(n):
            obj = root / split / f"obj{o}"
            color = tuple(int(c) for c in rng.integers(0, 200, 3))
            for v in range(views):
                write_view(obj, v, blob(color, 32).rotate(30 * v, fillcolor="white"),
                           cameras.pose_from_spherical(90 * v, 20, radii[v % len(radii)]))
            write_meta(obj, {"fov_deg": 40.0})


def test_distance_zoom_is_the_camera_slide():
    """Sliding a camera along its ray through the origin keeps the origin's pixel and scales the
    origin's depth plane by r_old / r_new about it: what zoom_images applies to an image."""
    w = cameras.pose_from_spherical(30, 15, 2.0)
    far = cameras.at_distance(w, 3.0)
    assert np.isclose(np.linalg.norm(cameras.camera_center(far)), 3.0) and np.allclose(far[:, :3], w[:, :3])
    rel = cameras.relative_pose(w, far)
    assert np.isclose(rel[3], 1.0) and np.allclose(rel[:3], [0, 0, 1])
    K = cameras.intrinsics(40.0, 64)
    p = 0.25 * w[0, :3] - 0.15 * w[1, :3]  # in the origin's depth plane (camera x and y axes)
    (uv_near,), _ = cameras.project(p[None], w, K)
    (uv_far,), _ = cameras.project(p[None], far, K)
    assert np.allclose(uv_far - 32, (uv_near - 32) * 2 / 3, atol=1e-4)
    img = np.full((64, 64, 3), 255, np.uint8)  # a dark 4x4 dot at the near pixel
    i, j = int(uv_near[1]), int(uv_near[0])
    img[i - 2:i + 2, j - 2:j + 2] = 0
    x = image_to_tensor(Image.fromarray(img))[None]
    z = zoom_images(x, [2 / 3], [cameras.origin_ndc(far, 40.0)])[0]
    dark = (1 - z.mean(0)).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    centroid = np.array([(dark * xs).sum() / dark.sum(), (dark * ys).sum() / dark.sum()])
    assert np.allclose(centroid - 32, (np.array([j, i]) - 32) * 2 / 3, atol=0.2)
    assert float(z[:, 0, 0].min()) == 1.0 and torch.equal(zoom_images(x, [1.0])[0], x[0])
    # an off-centre look: origin_ndc is where project() puts the origin
    off = cameras.look_at(cameras.spherical_to_center(10, 20, 2.0), target=(0.2, -0.1, 0.05))
    (uv,), _ = cameras.project(np.zeros((1, 3)), off, K)
    assert np.allclose(cameras.origin_ndc(off, 40.0), uv / 32 - 1, atol=1e-5)


def test_distance_zoom_pipeline_scales_the_model_view(tok):
    """distance_zoom: a camera twice as far gives the same sampled view at half the size."""
    p = NVSPipeline(randomize(NVSTransformer(small_cfg(tok, copy_gate=True, distance_zoom=True))), tok)
    h = p.encode_source(blob(), SRC)
    near = p.generate(h, None, [TGTS[1]], seed=3)[0]
    far_cam = cameras.at_distance(TGTS[1], 4.0)
    far = p.generate(h, None, [TGTS[0], far_cam], seed=3)[1]
    expect = tensor_to_image(zoom_images(image_to_tensor(near)[None], [0.5]))
    assert np.abs(arr(far) - arr(expect)).max() <= 2 and not np.array_equal(arr(far), arr(near))
    frames = list(p.stream(h, None, far_cam, seed=3))
    assert np.array_equal(arr(frames[-1].image), arr(far))
    assert arr(frames[0].image)[0, 0].min() == 255  # previews are scaled too: white enters at the border


def test_samples_average_independent_draws_of_each_camera(tok, monkeypatch):
    """samples=N: the pixel mean of the views seeds seed..seed+N-1 give, per target, zoom included."""
    p = NVSPipeline(randomize(NVSTransformer(small_cfg(tok, copy_gate=True, distance_zoom=True)), seed=2), tok)
    h = p.encode_source(blob(), SRC)
    tg = [TGTS[0], cameras.at_distance(TGTS[1], 3.0), TGTS[2]]
    singles = [p.generate(h, None, tg, seed=5 + j) for j in range(3)]
    assert not np.array_equal(arr(singles[0][0]), arr(singles[1][0]))  # the draws differ, so a mean is a mean
    mean = p.generate(h, None, tg, seed=5, samples=3)
    for i in range(len(tg)):
        expect = np.mean([arr(s[i]) for s in singles], axis=0)
        assert np.abs(arr(mean[i]) - expect).max() <= 1.0  # averaged before rounding to 8 bits
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(p.generate(h, None, tg, seed=5, samples=1), singles[0]))
    frames = list(p.stream(h, None, tg[1], seed=5, samples=3))
    assert len(frames) == p.num_scales and np.array_equal(arr(frames[-1].image), arr(mean[1]))
    for bad in (0, 65, 2.5, True, "4"):
        with pytest.raises(ValueError, match="samples"):
            p.generate(h, None, tg, samples=bad)
    monkeypatch.setattr("core.nvs.pipeline.GENERATE_ROWS", 3)  # one camera (x 3 samples) per pass
    chunked = p.generate(blob(), SRC, tg, seed=5, samples=3)
    assert len(chunked) == 3 and all(np.abs(arr(a) - arr(b)).mean() < 1.0 for a, b in zip(chunked, mean))


def test_distance_zoom_training_targets(tmp_path, tok):
    """The sampler's zoomed targets are the tokenizer's tokens of the scaled image, with d_r = 0."""
    from core.nvs.data import DistanceZoom, PairSampler, load_cached, tokenise_objects
    from core.train.nvs import main as train_main
    make_dataset(tmp_path / "data", n_train=1, n_val=1, radii=(2.0, 2.5))
    tokenise_objects(tmp_path / "data", "train", tok, tmp_path / "cache", 16, progress=False)
    objs = load_cached(tmp_path / "cache")
    folder = tmp_path / "data" / "train" / "obj0"
    zs = PairSampler(objs, 0.0, seed=0, zoom=DistanceZoom({"obj0": folder}, tok))
    b = zs.batch([(0, 0, 1), (0, 0, 2)])
    assert np.allclose(b["rel_pose"][:, 3].numpy(), 0.0, atol=1e-5)
    x = image_to_tensor(read_view(folder, "001", 32, extras=False).image)[None]
    want = torch.cat(tok.encode_indices(zoom_images(x, [2.5 / 2.0])), 1)[0]
    assert torch.equal(b["tgt"][0], want)  # 001 is farther: scaled up to the source's distance
    assert torch.equal(b["tgt"][1], torch.from_numpy(objs[0].tokens[2]).long())  # same distance: cached tokens
    plain = PairSampler(objs, 0.0, seed=0).batch([(0, 0, 1)])
    assert np.isclose(float(plain["rel_pose"][0, 3]), 0.5) and not torch.equal(plain["tgt"][0], want)
    tok.save_pretrained(tmp_path / "tokenizer")
    args = ["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tokenizer"), "--out",
            str(tmp_path / "run"), "--cache", str(tmp_path / "tc"), "--batch", "2", "--depth", "1", "--width", "32",
            "--heads", "2", "--embed-dim", "16", "--val-every", "100", "--steps", "1"]
    assert train_main(args + ["--distance-zoom"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["distance_zoom"] is True
    assert train_main(args + ["--resume", "--steps", "2", "--no-distance-zoom"]) == 2  # refused: trained with it
    assert train_main(args + ["--resume", "--steps", "2", "--online"]) == 2  # the online sampler does not zoom
    with pytest.raises(SystemExit):
        train_main(args + ["--distance-zoom", "--online"])


def test_train_resume_and_eval_cli(tmp_path, tok):
    from core.eval.nvs import main as eval_main
    from core.train.nvs import main as train_main
    make_dataset(tmp_path / "data")
    tok.save_pretrained(tmp_path / "tokenizer")
    args = ["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tokenizer"), "--out",
            str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--batch", "2", "--depth", "1", "--width", "32",
            "--heads", "2", "--val-every", "2", "--psnr-every", "2", "--psnr-objects", "1", "--psnr-views", "1",
            "--ckpt-every", "2", "--log-every", "1", "--embed-dim", "16"]
    assert train_main(args + ["--steps", "2"]) == 0
    state = json.loads((tmp_path / "run" / "ckpt-latest" / "train_state.json").read_text())
    assert state["step"] == 2 and (tmp_path / "run" / "ckpt-latest" / "optimizer.safetensors").is_file()
    assert (tmp_path / "run" / "ckpt-best" / "model.safetensors").is_file()
    # resume in online mode (each batch tokenised by the current tokenizer, which it follows)
    assert train_main(args + ["--steps", "3", "--resume", "--online", "--follow-tokenizer", "1"]) == 2  # schedule
    assert train_main(args + ["--steps", "3", "--resume", "--width", "64"]) == 2                   # model size
    assert train_main(args + ["--steps", "3", "--resume", "--online", "--follow-tokenizer", "1",
                              "--force-schedule"]) == 0
    assert json.loads((tmp_path / "run" / "ckpt-latest" / "train_state.json").read_text())["step"] == 3
    assert (tmp_path / "run" / "tokenizer" / "config.json").is_file()  # the tokenizer travels with the model
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r for r in log) and any("acc" in r for r in log)
    out = tmp_path / "eval.json"
    assert eval_main(["--data", str(tmp_path / "data"), "--checkpoint", str(tmp_path / "run"), "--tokenizer",
                      str(tmp_path / "tokenizer"), "--out", str(out), "--max-objects", "1"]) == 0
    res = json.loads(out.read_text())
    for k in ("psnr", "ssim", "baseline_copy_psnr", "baseline_copy_ssim", "seconds_per_view", "n_objects", "n_views",
              "per_object", "zero_pose_psnr"):
        assert k in res
    assert res["n_objects"] == 1 and res["n_views"] == 3
    # every camera at the same distance: scaling the copy changes nothing
    assert res["baseline_scaled_copy_psnr"] == res["baseline_copy_psnr"]
    assert eval_main(["--data", str(tmp_path / "data"), "--checkpoint", str(tmp_path / "run"), "--tokenizer",
                      str(tmp_path / "tokenizer"), "--out", str(out), "--sample", "1", "--no-guide"]) == 0
    res = json.loads(out.read_text())   # one object spread over two: the first; no lift, no guide scores
    assert res["n_objects"] == 1 and list(res["per_object"]) == ["obj0"] and "guide_psnr" not in res


def test_coarse_steps_train_the_first_scales(tmp_path, tok):
    """--coarse-scales/--coarse-fraction: every other step trains 1x1..2x2 with 4 targets per source;
    both kinds are logged apart; impossible settings are refused with the reason."""
    from core.train.nvs import main as train_main
    make_dataset(tmp_path / "data")
    tok.save_pretrained(tmp_path / "tokenizer")
    args = ["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tokenizer"), "--out",
            str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--batch", "2", "--depth", "1", "--width", "32",
            "--heads", "2", "--embed-dim", "16", "--log-every", "1", "--val-every", "100"]
    assert train_main(args + ["--steps", "4", "--coarse-scales", "2", "--coarse-fraction", "0.5",
                              "--coarse-batch", "8", "--coarse-targets-per-source", "4"]) == 0
    log = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert [("coarse_loss" in r, "loss" in r) for r in log] == [(False, True), (True, False)] * 2
    assert all(math.isfinite(r.get("loss", r.get("coarse_loss"))) for r in log)
    assert train_main(args + ["--steps", "1", "--coarse-scales", str(len(tok.config.patch_nums))]) == 2
    with pytest.raises(SystemExit):
        train_main(args + ["--steps", "1", "--coarse-scales", "2", "--coarse-fraction", "0"])
    with pytest.raises(SystemExit):
        train_main(args + ["--steps", "1", "--coarse-scales", "2", "--coarse-batch", "6"])


def test_bf16_autocast_training_path_runs_on_cpu(tmp_path, tok):
    """--precision bf16 (auto's choice on CUDA) on CPU: the step runs, the loss is finite, weights stay fp32."""
    from core.train.nvs import main as train_main
    from safetensors.torch import load_file
    make_dataset(tmp_path / "data")
    tok.save_pretrained(tmp_path / "tokenizer")
    assert train_main(["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tokenizer"), "--out",
                       str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--batch", "2", "--depth", "1",
                       "--width", "32", "--heads", "2", "--embed-dim", "16", "--steps", "2", "--log-every", "1",
                       "--val-every", "100", "--precision", "bf16"]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log and all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    sd = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in sd.values() if t.is_floating_point())


# ----------------------------------------------------------------------------- importer / open_clip
def archonview_state_dict(depth=2, V=4096, Cvae=32, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), E=768):
    """Random tensors under the published ArchonView names/shapes (width 64 x depth, heads = depth)."""
    C, g = 64 * depth, torch.Generator().manual_seed(0)
    L, S = sum(p * p for p in patch_nums), len(patch_nums)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    sd = {"pos_start": r(1, 1, C), "pos_1LC": r(1, L, C), "xpos_1LC": r(1, L, C), "lvl_embed.weight": r(S, C),
          "xlvl_embed.weight": r(S, C), "emb_linear.weight": r(C, E), "emb_linear.bias": r(C),
          "pose_embed.weight": r(E, E + 4), "pose_embed.bias": r(E), "word_embed.weight": r(C, Cvae),
          "word_embed.bias": r(C), "null_token": r(C), "head.weight": r(V, C), "head.bias": r(V),
          "lvl_1L": torch.zeros(1, L, dtype=torch.long), "attn_bias_for_masking": torch.zeros(1, 1, 2 * L, L)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "attn.scale_mul_1H11": r(1, depth, 1, 1), p + "attn.q_bias": r(C), p + "attn.v_bias": r(C),
                   p + "attn.zero_k_bias": torch.zeros(C), p + "attn.mat_qkv.weight": r(3 * C, C),
                   p + "attn.proj.weight": r(C, C), p + "attn.proj.bias": r(C), p + "ffn.fc1.weight": r(4 * C, C),
                   p + "ffn.fc1.bias": r(4 * C), p + "ffn.fc2.weight": r(C, 4 * C), p + "ffn.fc2.bias": r(C),
                   p + "ada_lin.1.weight": r(6 * C, C), p + "ada_lin.1.bias": r(6 * C)})
    return sd


def test_import_archonview(tmp_path):
    from safetensors.torch import save_file
    from core.nvs.importer import import_archonview
    sd = archonview_state_dict(depth=2)
    torch.save({"trainer": {"var_wo_ddp": sd}, "epoch": 3}, tmp_path / "ar.pth")
    with pytest.raises(CheckpointError, match=r"ar\.pth.*never unpickles"):  # pickles are refused unopened
        import_archonview(tmp_path / "ar.pth", tmp_path / "vae.safetensors", tmp_path / "pk")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "ar.safetensors")
    tcfg = TokenizerConfig(resolution=128, patch_size=4, ch=16, ch_mult=(1, 2, 2), norm_groups=8, vocab_size=4096,
                           latent_dim=32, patch_nums=(1, 2, 3, 4, 5, 6, 8),
                           num_res_blocks=1)
    vae = MultiScaleVQVAE(tcfg)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="pos_1LC"):  # 680 tokens do not fit these patch_nums
        import_archonview(tmp_path / "ar.safetensors", tmp_path / "vae.safetensors", tmp_path / "bad", tokenizer_config=tcfg)
    sd2 = archonview_state_dict(depth=2, patch_nums=tcfg.patch_nums)
    save_file({k: v.contiguous() for k, v in sd2.items()}, tmp_path / "ar2.safetensors")
    with pytest.warns(UserWarning, match="unconditional"):
        out = import_archonview(tmp_path / "ar2.safetensors", tmp_path / "vae.safetensors", tmp_path / "imp",
                                tokenizer_config=tcfg)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["depth"], cfg["width"], cfg["num_heads"], cfg["vocab_size"], cfg["embed_dim"]) == (2, 128, 2, 4096, 768)
    assert cfg["prefix_cond"] == "full" and cfg["embedder"] == "open_clip"
    m = NVSTransformer.from_pretrained(out)
    assert torch.equal(m.blocks[1].attn.mat_qkv.weight, sd2["blocks.1.attn.mat_qkv.weight"])
    tok = MultiScaleVQVAE.from_pretrained(out / "tokenizer")
    p = NVSPipeline(m, tok, embedder=lambda x: torch.nn.functional.normalize(torch.randn(x.shape[0], 768), dim=-1))
    img = p.generate(blob(), SRC, TGTS[:1], seed=0)[0]
    assert img.size == (128, 128)
    with pytest.raises(ValueError, match="open_clip"):
        NVSPipeline(m, tok)


def test_open_clip_embedder_local_weights(tmp_path):
    from core.compat import ensure_torchvision
    ensure_torchvision()
    import open_clip
    from safetensors.torch import save_file
    from core.nvs.embedders import OpenCLIPEmbedder
    open_clip.add_model_config  # noqa: B018  (the documented way to register a custom config)
    name = "vantage-tiny-vit"
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    model = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    emb = OpenCLIPEmbedder(name, tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    e = emb(x)
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert emb.null_text_embedding().shape == (32,)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        OpenCLIPEmbedder(name, tmp_path / "missing.safetensors")


def test_benchmark_cli_reports_every_ratio(pipe, tmp_path):
    """The speed benchmarks run end to end (on tiny models; the numbers themselves are not checked here)."""
    from core.bench.nvs import main as bench_nvs
    from core.bench.tokenizer import main as bench_tok
    pipe.model.save_pretrained(tmp_path / "nvs")
    pipe.tok.save_pretrained(tmp_path / "tokenizer")
    assert bench_nvs(["--checkpoint", str(tmp_path / "nvs"), "--repeats", "1", "--threads", "1",
                      "--diffusion-repeats", "1", "--out", str(tmp_path / "nvs.json")]) == 0
    res = json.loads((tmp_path / "nvs.json").read_text())
    for key in ("first_preview_s", "full_view_s", "per_scale_s"):
        assert key in res["stream_all_previews"]
    for key in ("kv_cache_speedup", "prefix_reuse_speedup", "ar_vs_diffusion_25_speedup", "ar_vs_diffusion_50_speedup",
                "bf16_vs_fp32_speedup", "ar_vs_diffusion_50_bf16_autocast_speedup"):
        assert math.isfinite(res[key]) and res[key] > 0
    assert len(res["stream_all_previews"]["per_scale_s"]) == pipe.num_scales
    mean = res["stream_mean_of_samples"]
    assert mean["samples"] == 8 and mean["full_view_s"] > 0
    assert mean["ar_vs_diffusion_50_same_draws_speedup"] > 0 and mean["ar_mean_vs_diffusion_50_one_draw_speedup"] > 0
    assert bench_tok(["--checkpoint", str(tmp_path / "tokenizer"), "--repeats", "1", "--threads", "1"]) == 0
    assert bench_nvs(["--checkpoint", str(tmp_path / "nvs"), "--repeats", "1", "--threads", "1", "--quick",
                      "--out", str(tmp_path / "quick.json")]) == 0
    quick = json.loads((tmp_path / "quick.json").read_text())
    assert quick["encode_source_s"] > 0 and quick["stream_all_previews"]["full_view_s"] > 0
    assert "kv_cache_speedup" not in quick
