"""Vantage app: ``python app.py`` serves Gradio and Viser on one port.

Gradio runs the page; Viser runs on an internal loopback port and is reachable only
through the same-origin proxy mounted at ``/viser`` on Gradio's own server, so one
public port is enough (a Hugging Face Space exposes exactly one).
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from core.cli import device_arg

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent
ON_SPACE = bool(os.environ.get("SPACE_ID"))
MAX_UPLOAD = "20mb"


class AddressUnavailable(RuntimeError):
    """The public host:port cannot be bound: said before any model loads, in the app's own terms."""


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def check_port_free(host: str, port: int) -> None:
    """Raise AddressUnavailable when ``host:port`` cannot be bound (bound as Gradio binds it, with
    SO_REUSEADDR, so a socket left in TIME_WAIT by an app that just quit does not count as busy)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise AddressUnavailable(f"cannot bind {host}:{port}: unknown host ({e})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise AddressUnavailable(port_message(host, port, e.strerror or str(e))) from None


def port_message(host: str, port: int, reason: str) -> str:
    other = port + 1 if port < 65535 else port - 1
    return (f"port {port} on {host} is not available ({reason}): another Vantage or another program is "
            f"using it. Stop that program, or start this one on another port, e.g. --port {other}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python app.py",
        description="Vantage: one photo -> novel views streamed coarse to fine, and a 3D mesh (GLB). "
                    "Serves the Gradio page and the Viser 3D view on one port.")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the app "
                        "to your network: a warning is shown)")
    p.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
                   help="public port for the page and the proxied 3D view (default 7860)")
    p.add_argument("--device", type=device_arg, default="auto", help="torch device for the models: auto (CUDA if present, "
                   "else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--checkpoints", default=str(ROOT / "checkpoints"), metavar="DIR",
                   help="folder with nvs/, tokenizer/ and recon/ checkpoints (default ./checkpoints); "
                        "missing ones disable only the features that need them")
    p.add_argument("--models", default=None, metavar="NAMES",
                   help="published models by name, comma-separated (python -m core.weights list), e.g. "
                        "archonview-d16,triposr: used instead of the --checkpoints folder's nvs/ and recon/ "
                        "(default $VANTAGE_MODELS)")
    p.add_argument("--fetch", action="store_true", default=os.environ.get("VANTAGE_FETCH", "") not in ("", "0"),
                   help="download and convert --models not converted yet, before starting (default $VANTAGE_FETCH; "
                        "a Space sets VANTAGE_MODELS and VANTAGE_FETCH=1)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link "
                   "(exposes the app to the internet: a warning is shown)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting per event before new ones "
                   "are refused (default 32)")
    return p.parse_args(argv)


def exposure_warning(host: str, share: bool) -> str | None:
    """A sentence for the UI and the log when the app is reachable beyond this machine."""
    if share:
        return "This app is shared through a public link: anyone with the link can use it."
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not ON_SPACE:
        return f"This app listens on {host}: other machines on your network can reach it."
    return None


@dataclass
class Running:
    demo: object
    scene: object
    backend: object
    url: str
    janitor: object = None    # threading.Event that stops the backend's janitor

    def close(self) -> None:
        try:
            self.demo.close()
        finally:
            if self.janitor is not None:
                self.janitor.set()
            self.scene.stop()
            self.backend.sessions.close_all()


def resolve_models(names: str | None, fetch: bool = False) -> dict:
    """``--models`` -> role -> converted folder (``core.weights``); NotConverted says the fetch command."""
    from core import weights
    names = weights.parse_names(names)
    if fetch:
        from core.weights.fetch import fetch as fetch_model
        for n in names:
            fetch_model(n, log=lambda m: print(m, file=sys.stderr, flush=True))
    return weights.resolve(names)


def launch(host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", checkpoints: str | None = None,
           share: bool = False, backend=None, max_queue: int = 32, quiet: bool = False,
           models: dict | None = None) -> Running:
    """Start everything without blocking; tests and the benchmark call this in-process.
    Raises AddressUnavailable, before loading anything, when ``port`` is taken."""
    from viewer.backend import Backend
    from viewer.proxy import mount_viser_proxy
    from viewer.ui import ASSETS, build_demo
    from viewer.viser_scene import ViserScene

    check_port_free(host, port)
    warning = exposure_warning(host, share)
    if warning:  # printed, not logged: it must show even when logging is not configured
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    from viewer.backend import return_large_blocks_at_once
    return_large_blocks_at_once()
    backend = backend or Backend.load(checkpoints, device=device, models=models)
    scene = ViserScene(backend, host="127.0.0.1", port=0)
    demo = build_demo(backend, exposed_warning=warning)
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    try:
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, ssr_mode=False,
                    max_file_size=MAX_UPLOAD, allowed_paths=[str(backend.sessions.root), str(ASSETS)],
                    show_error=True, quiet=quiet, inbrowser=False)
    except OSError as e:
        scene.stop()
        if "port" not in str(e).lower():
            raise
        # taken between the check above and the bind (Gradio words it for its own API)
        raise AddressUnavailable(port_message(host, port, "taken while the app was starting")) from None
    mount_viser_proxy(demo.app, scene.port)
    return Running(demo, scene, backend, demo.local_url, backend.start_janitor())


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        models = resolve_models(args.models, args.fetch)
    except (ValueError, RuntimeError) as e:  # not converted (says the fetch command), or a failed fetch
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run = launch(args.host, args.port, args.device, args.checkpoints, args.share,
                     max_queue=args.max_queue, models=models)
    except AddressUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Vantage running at {run.url} (3D view proxied at {run.url.rstrip('/')}/viser/)")
    stop_on_sigterm()
    try:
        run.demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        run.close()   # every session's files (and Gradio's copies of them) removed, as on Ctrl+C
    return 0


def stop_on_sigterm() -> None:
    """SIGTERM (how Spaces, systemd and docker stop a server) takes Ctrl+C's path: the main thread
    leaves ``block_thread`` and ``Running.close`` removes every session's files."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
