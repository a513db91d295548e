"""Convert VAR's published tokenizer (``vae_ch160v4096z32.pth``) into a Vantage checkpoint folder.

Our module names are VAR's (``encoder.down.N.block.M...``, ``quantize.embedding.weight``,
``quantize.quant_resi.qresi_ls.K.weight``, ``quant_conv``, ``post_quant_conv``, ``decoder.up...``),
so conversion is: unwrap, drop training-only statistics, and check every name and shape
against ``TokenizerConfig.var_published()`` with an error naming each mismatch. The result is
written once as config.json + model.safetensors. The ``.pth`` itself is a pickle and is never
opened here: convert it to ``.safetensors`` first (the error message says how).

    python -m core.tokenizer.importer vae_ch160v4096z32.safetensors checkpoints/var-tokenizer
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from core.checkpoint import CheckpointError, read_third_party, save_checkpoint

from .config import TokenizerConfig
from .vqvae import MultiScaleVQVAE

# VAR keeps an EMA of code hits per scale for its own logging; it is not part of the model.
IGNORED_KEYS = ("quantize.ema_vocab_hit_SV",)
_WRAPPERS = ("state_dict", "model", "vae", "vae_wo_ddp", "vae_local")


def expected_shapes(config: TokenizerConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of our module for ``config``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = MultiScaleVQVAE(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file with VAR's names; a ``.pth`` is refused (a pickle: convert it first)."""
    return read_third_party(path)


def unwrap(obj, source: str = "state dict") -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            key = next((k for k in _WRAPPERS if k in obj), None)
            if key is None:
                break
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a dict of tensors (a VAR VQVAE state dict)")
    return obj


def convert_var_state_dict(state: dict[str, torch.Tensor], config: TokenizerConfig | None = None,
                           source: str = "VAR state dict") -> dict[str, torch.Tensor]:
    """VAR names -> ours (identical by design), validated; raises CheckpointError naming the mismatch."""
    config = config or TokenizerConfig.var_published()
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in unwrap(state, source).items()}
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    want = expected_shapes(config)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    bad = [f"{k}: got {tuple(state[k].shape)}, expected {want[k]}" for k in want if k in state and tuple(state[k].shape) != want[k]]
    nonfloat = [k for k in want if k in state and not state[k].is_floating_point()]
    msgs = []
    if missing:
        msgs.append(f"missing {len(missing)} key(s): {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        msgs.append(f"unexpected {len(unexpected)} key(s): {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    if bad:
        msgs.append("wrong shape: " + "; ".join(bad[:6]) + (" ..." if len(bad) > 6 else ""))
    if nonfloat:
        msgs.append(f"non-float tensors: {nonfloat[:6]}")
    if msgs:
        raise CheckpointError(f"{source}: does not match VAR's tokenizer layout "
                              f"(ch={config.ch}, ch_mult={config.ch_mult}, z={config.latent_dim}, "
                              f"vocab={config.vocab_size}): " + " | ".join(msgs))
    return {k: state[k].detach().to(torch.float32).contiguous() for k in want}


def import_var_checkpoint(src: str | Path, out: str | Path, config: TokenizerConfig | None = None) -> Path:
    config = config or TokenizerConfig.var_published()
    state = convert_var_state_dict(read_state_dict(src), config, source=str(src))
    return save_checkpoint(out, state, config.to_dict(), metadata={"source": f"VAR {Path(src).name}"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.tokenizer.importer", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="VAR's vae_ch160v4096z32.pth (or a .safetensors with VAR's names)")
    ap.add_argument("out", help="output checkpoint folder")
    a = ap.parse_args(argv)
    try:
        folder = import_var_checkpoint(a.src, a.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
