"""`python -m core.bench nvs --checkpoint checkpoints/nvs [--out FILE.json]`

Side by side, in one run, at the checkpoint's size (medians over --repeats):
time to first preview, per-scale time and full view time (streaming, previews decoded);
AR sampling with vs without the KV cache; 8 target cameras with the source prefix
encoded once and reused vs re-encoded per camera (and one batch of 8); the same
transformer run as a 25- and 50-step diffusion denoiser over the same token grid (the
peer ArchonView compares against; weights do not matter for timing); fp32 vs bf16
autocast, and the 50-step ratio again with both sides under bf16. Ratios > 1 mean the
first-named path is faster. ``--quick``: the source encoding and one streamed view only. The AR-vs-diffusion ratios are medians over --diffusion-repeats
back-to-back pairs (AR view incl. decode, then the peer).

With a reconstruction model (``--recon``, default the ``recon/`` beside the checkpoint; ``--no-guide``
skips it) the source is also lifted once (``guide.lift_s``) and every streamed view starts with the
guide frame: ``guide.first_frame_s`` is a camera move to that frame, ``guide.render_ms`` one raster.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from core.report import emit_json, peak_rss_mb


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _median(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN kernels)
    return statistics.median(_once(fn) for _ in range(repeats))


def _source(data: str | None, size: int):
    from core import cameras
    from core.data.io import index_objects, read_view
    if data:
        o = index_objects(data, "val")[0]
        v = read_view(o.folder, o.views[0], size)
        return v.image, v.w2c
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).ellipse((size // 4, size // 5, 3 * size // 4, 4 * size // 5), fill=(180, 60, 40))
    return img, cameras.pose_from_spherical(0, 20, 2.0)


def reencoded_prefix_kv(pipe, batch) -> list:
    """Every row's prefix keys/values encoded afresh (source and null prefix): what a pipeline
    without the prefix cache pays for each camera, or, without the KV cache, at every scale."""
    from core.nvs.sampling import expand_kv
    m, h, N = pipe.model, batch.handle, batch.rows
    with torch.no_grad(), pipe.precision():
        if m.config.prefix_cond == "full":
            kv = m.encode_prefix(m.embed_prefix(h.codes).expand(N, -1, -1), batch.cond)
        else:
            kv = expand_kv(m.encode_prefix(m.embed_prefix(h.codes), m.source_condition(h.embedding)), N)
        null = expand_kv(m.encode_prefix(m.null_prefix(1), m.null_condition(1)), N) if batch.uncond is not None else None
    return pipe.join_prefixes(kv, null, batch)


def sample_baseline(pipe, batch, sampling, use_cache: bool) -> torch.Tensor:
    """The final f_hat of ``batch`` sampled with the prefix re-encoded, with the KV cache or
    (``use_cache=False``) re-running the prefix and every earlier scale at each scale."""
    from core.nvs.sampling import next_scale_sample
    it = next_scale_sample(pipe.model, pipe.tok, batch.cond, batch.uncond, lambda: reencoded_prefix_kv(pipe, batch),
                           sampling, batch.seeds, use_cache=use_cache, src_idx=batch.src_idx,
                           guide_idx=batch.guide_idx)
    f_hat = None
    with torch.no_grad(), pipe.precision():
        for _, f_hat, _ in it:
            pass
    return f_hat


@torch.no_grad()
def diffusion_peer(pipe, handle, target, steps: int, draws: int = 1) -> None:
    """``steps`` denoiser passes of the same transformer over the final G x G token grid at once
    (bidirectional, CFG-doubled batch, prefix cached), then one decode: the cost shape of a
    latent/discrete diffusion sampler on the same grid (conservative: 256 tokens, not 680).
    ``draws``: that many samples of the camera in one batch (the peer of ``samples=N``)."""
    from core.nvs.model import KVCache
    from core.nvs.sampling import SamplingParams
    m, n = pipe.model, draws
    batch = pipe.prepare(handle, None, [target] * n, SamplingParams())  # guided as the demo (cfg 3, below)
    c = torch.cat((batch.cond, batch.uncond))
    G = m.config.patch_nums[-1]
    kv = KVCache.preallocate(pipe.prefix_kv(batch), G * G)  # the prefix written once, as the AR sampler does
    book = pipe.tok.lookup(torch.arange(m.config.vocab_size)[None])[0]
    x = torch.randn(2 * n, G * G, m.config.latent_dim)
    with pipe.precision():  # the pipeline's precision, as its AR sampler runs
        mods = m.modulations(c)  # per view, as the AR sampler does
        for _ in range(steps):
            h, _ = m.run(m.embed_scale(m.config.num_scales - 1, x), mods, [b.truncate() for b in kv])
            logits = m.logits(h)
            x = (logits[:n] * 4 - logits[n:] * 3).softmax(-1) @ book  # guided x0 estimate
            x = torch.cat((x, x))
    pipe.tok.decode_fhat(x[:n].transpose(1, 2).reshape(n, -1, G, G))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.bench nvs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/nvs")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--data", default=None, help="take the source view from this dataset's val split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--diffusion-repeats", type=int, default=3, help="AR-view / diffusion-peer pairs timed")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--samples", type=int, default=8,
                    help="also time the mean of this many samples per view, streamed and against the peer "
                         "(0 or 1: skip)")
    ap.add_argument("--quick", action="store_true", help="only the source encoding and one streamed view (a "
                    "large model, e.g. a published ArchonView on a CPU: the comparisons would take an hour)")
    ap.add_argument("--recon", default=None, help="reconstruction model for the guide (default: recon/ beside the "
                    "checkpoint when there is one)")
    ap.add_argument("--no-guide", action="store_true", help="no lift and no guide frame (an unguided model only)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from core import cameras
    from core.nvs import NVSPipeline
    from core.nvs.sampling import SamplingParams
    recon = a.recon
    if recon is None and not a.no_guide:
        near = Path(a.checkpoint).parent / "recon"
        recon = str(near) if (near / "config.json").is_file() else None
    pipe = NVSPipeline.from_pretrained(a.checkpoint, tokenizer=a.tokenizer, recon=None if a.no_guide else recon)
    img, src_w2c = _source(a.data, pipe.resolution)
    # 10 % farther than the source: a distance_zoom model pays for scaling every frame
    targets = cameras.orbit(8, 20, 1.1 * float(cameras.spherical_from_pose(src_w2c)[2]), 45.0)
    S, R = pipe.num_scales, a.repeats
    sp = SamplingParams()  # ArchonView's demo settings, one sample
    res: dict = {"device": "cpu", "threads": a.threads, "resolution": pipe.resolution, "num_scales": S,
                 "num_tokens": pipe.model.config.num_tokens,
                 "params_transformer_M": sum(p.numel() for p in pipe.model.parameters()) / 1e6,
                 "params_tokenizer_M": sum(p.numel() for p in pipe.tok.parameters()) / 1e6,
                 "config": {k: pipe.model.config.to_dict()[k] for k in ("depth", "width", "num_heads", "vocab_size")}}
    handle = pipe.encode_source(img, src_w2c)
    res["encode_source_s"] = _median(lambda: pipe.encode_source(img, src_w2c), R)
    if pipe.recon is not None:  # the lift is part of encode_source; timed alone too
        from core.nvs.guide import lift_guide
        guide = {"lift_s": _median(lambda: lift_guide(pipe.recon, img, src_w2c, handle.fov_deg, pipe.resolution), R),
                 "note": handle.guide_note or None}
        if handle.guide is not None:
            guide["render_ms"] = 1000 * _median(lambda: handle.guide.render(targets[1]), 10)
            firsts = []
            for t in targets:  # a camera move: the stream is asked for a new camera, its first frame is the guide
                it = pipe.stream(handle, None, t, sp)
                firsts.append(next(it).elapsed_s)
                it.close()
            guide["first_frame_s"] = statistics.median(firsts)
        res["guide"] = guide

    def stream_once(preview=None):  # the sampled frames (the guide frame, when there is one, is timed above)
        return [(f.scale, f.elapsed_s, dict(f.timings)) for f in
                pipe.stream(handle, None, targets[0], sp, preview_scales=preview) if not f.is_guide]
    runs = [stream_once() for _ in range(R + 1)][1:]
    first = statistics.median(r[0][1] for r in runs)
    full = statistics.median(r[-1][1] for r in runs)
    per_scale = [statistics.median(r[i][1] - (r[i - 1][1] if i else 0.0) for r in runs) for i in range(S)]
    res["stream_all_previews"] = {"first_preview_s": first, "full_view_s": full, "per_scale_s": per_scale,
                                  "decode_total_s": statistics.median(r[-1][2]["decode_s"] for r in runs),
                                  "sample_total_s": statistics.median(r[-1][2]["sample_s"] for r in runs)}
    if a.quick:
        emit_json({**res, "peak_rss_mb": peak_rss_mb()}, a.out)
        return 0
    few = [stream_once([0, 1, S // 2]) for _ in range(R)]
    res["stream_previews_1_mid_last"] = {"first_preview_s": statistics.median(r[0][1] for r in few),
                                         "full_view_s": statistics.median(r[-1][1] for r in few)}

    def ar(use_cache=True, h=handle):
        batch = pipe.prepare(h, None, [targets[0]], sp)
        if use_cache:
            for _ in pipe.sample(batch, sp):
                pass
        else:
            sample_baseline(pipe, batch, sp, use_cache=False)
    res["ar_sampling_kv_cache_s"] = _median(ar, R)
    res["ar_sampling_no_kv_cache_s"] = _median(lambda: ar(False), R)
    res["kv_cache_speedup"] = res["ar_sampling_no_kv_cache_s"] / res["ar_sampling_kv_cache_s"]
    res["decode_s"] = _median(lambda: pipe.decode(pipe.tok.empty_fhat(1)), R)
    res["full_view_s"] = res["ar_sampling_kv_cache_s"] + res["decode_s"]

    def reuse():
        h = pipe.encode_source(img, src_w2c)
        for t in targets:
            pipe.generate(h, None, [t], sp)

    def no_reuse():  # the source encoded and its prefix run again for every camera
        for t in targets:
            batch = pipe.prepare(pipe.encode_source(img, src_w2c), None, [t], sp)
            pipe.decode(sample_baseline(pipe, batch, sp, use_cache=True), batch.zoom)
    res["8_cameras_prefix_reused_s"] = _median(reuse, max(1, R // 2))
    res["8_cameras_prefix_reencoded_s"] = _median(no_reuse, max(1, R // 2))
    res["prefix_reuse_speedup"] = res["8_cameras_prefix_reencoded_s"] / res["8_cameras_prefix_reused_s"]
    res["8_cameras_one_batch_s"] = _median(lambda: pipe.generate(handle, None, targets, sp), max(1, R // 2))

    def ratio_pairs(h, steps: int, suffix: str = "") -> None:
        """AR view (sampling + one decode) and diffusion peer timed back to back in each pair, so a
        drift of the (shared, virtual) CPU between benchmark phases does not move the ratio."""
        def ar_view():
            ar(h=h)
            pipe.decode(pipe.tok.empty_fhat(1))
        diffusion_peer(pipe, h, targets[0], steps)  # warm-up
        pairs = [(_once(ar_view), _once(lambda: diffusion_peer(pipe, h, targets[0], steps)))
                 for _ in range(a.diffusion_repeats)]
        res[f"diffusion_{steps}_steps{suffix}_s"] = statistics.median(d for _, d in pairs)
        res[f"ar_vs_diffusion_{steps}{suffix}_speedup"] = statistics.median(d / v for v, d in pairs)
    for steps in (25, 50):
        ratio_pairs(handle, steps)
    if a.samples > 1:  # the posterior-mean view (NVSPipeline samples=N): streamed, and against the peer
        n = a.samples      # drawing N too (both N draws in one batch) and against one peer draw
        spn = SamplingParams(samples=n)

        def mean_stream(preview=None, repeats=R):
            return [[f.elapsed_s for f in pipe.stream(handle, None, targets[0], spn, preview_scales=preview)
                     if not f.is_guide] for _ in range(repeats)]
        mean_stream(repeats=1)  # warm-up
        every, two = mean_stream(), mean_stream([1, S // 2])
        mean_view = lambda: pipe.generate(handle, None, [targets[0]], spn)  # noqa: E731
        peer_n = lambda: diffusion_peer(pipe, handle, targets[0], 50, draws=n)  # noqa: E731
        peer_n()  # warm-up
        pairs = [(_once(mean_view), _once(peer_n)) for _ in range(a.diffusion_repeats)]
        view_s = statistics.median(v for v, _ in pairs)
        res["stream_mean_of_samples"] = {
            "samples": n, "first_preview_s": statistics.median(r[0] for r in every),
            "full_view_s": statistics.median(r[-1] for r in every),
            "full_view_previews_1_mid_s": statistics.median(r[-1] for r in two), "mean_view_s": view_s,
            "diffusion_50_steps_same_draws_s": statistics.median(d for _, d in pairs),
            "ar_vs_diffusion_50_same_draws_speedup": statistics.median(d / v for v, d in pairs),
            "ar_mean_vs_diffusion_50_one_draw_speedup": res["diffusion_50_steps_s"] / view_s}
    if not a.no_bf16:  # the same under bf16 autocast (CUDA's default; AVX-512 bf16 / AMX CPUs gain too)
        pipe.set_autocast(True)
        h16 = pipe.encode_source(img, src_w2c)
        res["ar_sampling_bf16_autocast_s"] = _median(lambda: ar(h=h16), R)
        res["bf16_vs_fp32_speedup"] = res["ar_sampling_kv_cache_s"] / res["ar_sampling_bf16_autocast_s"]
        ratio_pairs(h16, 50, "_bf16_autocast")
        pipe.set_autocast(False)
    res["targets"] = {"first_preview_le_0.1s": first <= 0.1, "full_view_le_1s": full <= 1.0,
                      "full_view_le_0.5s": full <= 0.5,
                      "guide_first_frame_le_30ms": res.get("guide", {}).get("first_frame_s", float("inf")) <= 0.03,
                      "kv_cache_ge_3x": res["kv_cache_speedup"] >= 3, "ar_vs_diffusion50_ge_8x":
                      res["ar_vs_diffusion_50_speedup"] >= 8}
    res["peak_rss_mb"] = peak_rss_mb()
    emit_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
