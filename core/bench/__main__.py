"""`python -m core.bench {tokenizer,nvs,recon,...} [args]`: dispatch to `core.bench.<name>.main`."""
import importlib
import importlib.util
import sys

COMMANDS = {name: f"core.bench.{name}" for name in ("data", "tokenizer", "nvs", "recon", "app")}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    available = [n for n in COMMANDS if importlib.util.find_spec(COMMANDS[n]) is not None]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        print(f"usage: python -m core.bench {{{','.join(available)}}} [options]  (each has --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
