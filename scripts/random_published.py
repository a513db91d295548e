"""Random weights at the published sizes, in this project's checkpoint format, for timing on machines
that cannot download the real ones (speed does not depend on the values):

    python scripts/random_published.py OUT     # OUT/triposr, OUT/archonview-d16 (+ tokenizer/)
    python -m core.bench recon --checkpoint OUT/triposr --repeat 1 --threads 2
    python -m core.bench nvs --checkpoint OUT/archonview-d16 --quick --repeats 1 --threads 2

ArchonView d16 is 309 M parameters with VAR's tokenizer; a small CNN embedder stands in for CLIP ViT-L/14
(the view time does not include embedding the source).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.nvs.config import NVSConfig  # noqa: E402
from core.nvs.model import NVSTransformer  # noqa: E402
from core.nvs.pipeline import tokenizer_fingerprint  # noqa: E402
from core.recon.triposr import TripoSRModel  # noqa: E402
from core.recon.triposr_config import TripoSRConfig  # noqa: E402
from core.tokenizer import MultiScaleVQVAE, TokenizerConfig  # noqa: E402


def main(out: Path) -> None:
    torch.manual_seed(0)
    TripoSRModel(TripoSRConfig()).save_pretrained(out / "triposr")
    tok = MultiScaleVQVAE(TokenizerConfig.var_published())
    tok.save_pretrained(out / "archonview-d16" / "tokenizer")
    c = tok.config
    cfg = NVSConfig(depth=16, width=1024, num_heads=16, vocab_size=c.vocab_size, latent_dim=c.latent_dim,
                    patch_nums=tuple(c.patch_nums), resolution=c.resolution, embedder="cnn")
    cfg.tokenizer_hash = tokenizer_fingerprint(tok)
    NVSTransformer(cfg).save_pretrained(out / "archonview-d16")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
