"""`python -m core.bench {tokenizer,nvs,recon,...} [args]`: dispatch to `core.bench.<name>.main`."""
import sys

from core.cli import dispatch

if __name__ == "__main__":
    sys.exit(dispatch("bench"))
