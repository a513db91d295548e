"""`python -m core.eval {tokenizer,nvs,recon,...} [args]`: dispatch to `core.eval.<name>.main`."""
import sys

from core.cli import dispatch

if __name__ == "__main__":
    sys.exit(dispatch("eval"))
