"""`python -m core.train {tokenizer,nvs,recon,...} [args]`: dispatch to `core.train.<name>.main`."""
import sys

from core.cli import dispatch

if __name__ == "__main__":
    sys.exit(dispatch("train"))
