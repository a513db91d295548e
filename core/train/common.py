"""What the tokenizer, NVS and reconstruction trainers share, so each holds only its own model's step.

* **Runtime flags** (``add_runtime_args``): ``--batch --threads --time-limit --resume --precision
  --device --seed`` with one meaning everywhere. The spellings they replace (``--batch-size``,
  ``--max-minutes``, ``--amp``, ``--bf16``) still work for one release, with a deprecation note.
* **Run folder** (``RunFolder``): ``OUT/ckpt-latest/`` (model + optimizer + ``train_state.json``,
  what ``--resume`` reads), ``OUT/ckpt-best/`` (the best model by the trainer's validation metric),
  ``OUT/log.jsonl``, and at the end the final model in ``OUT/`` itself, so ``OUT`` is a checkpoint
  folder. Every checkpoint is written into a temp folder and swapped in: a crash never leaves half.
* **Optimizer state in safetensors** (``save_optimizer`` / ``load_optimizer``): tensors by
  parameter index, the param groups' hyper-parameters in the file's metadata; never a pickle.
* **Schedule** (``lr_at``): linear warm-up, an optional flat stretch, a cosine to ``floor`` x base,
  paced by steps or by the time limit, whichever is further along.
* **Clean stop** (``StopSignal``): SIGTERM/SIGINT finish the step, then the trainer saves and exits.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.checkpoint import CheckpointError, check_safetensors_file
from core.cli import device_arg
from core.train.distributed import Distributed, init_distributed

PRECISIONS = ("auto", "fp32", "bf16")
STATE_NAME = "train_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


# ----------------------------------------------------------------------------- flags

class _Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new flag's ``dest`` (through ``convert``) and
    says once, on stderr, what to write instead."""

    def __init__(self, option_strings, dest, use: str, convert=None, **kw):
        self.use, self.convert = use, convert or (lambda v: v)
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and goes in the next release; use {self.use}",
              file=sys.stderr)
        setattr(namespace, self.dest, self.convert(values))


_OLD_PRECISION = {"off": "fp32", "on": "bf16", "bf16": "bf16", "auto": "auto"}


def add_runtime_args(ap: argparse.ArgumentParser, batch: int, threads: int = 1) -> None:
    """The flags every trainer takes, with the same names and meanings."""
    g = ap.add_argument_group("runtime (the same in every trainer)")
    g.add_argument("--batch", type=int, default=batch, help=f"samples per optimizer step (default {batch})")
    g.add_argument("--threads", type=int, default=threads, help="torch CPU threads")
    g.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop (and save) after this many minutes of training in total, resumed segments "
                        "included; the lr schedule ends with it")
    g.add_argument("--resume", action="store_true", help="continue from OUT/ckpt-latest (model, optimizer, step); "
                   "refused when the model or schedule flags differ from the run's")
    g.add_argument("--force-schedule", action="store_true",
                   help="with --resume: continue with changed schedule flags (--steps, --lr, --warmup, --time-limit)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fp32, or bf16 autocast (weights stay fp32); auto = bf16 on CUDA, and on a CPU whichever "
                        "a few timed steps of this model find faster (recorded in train_state.json)")
    g.add_argument("--device", type=device_arg, default="auto")
    g.add_argument("--seed", type=int, default=0)
    # old spellings, kept for one release
    g.add_argument("--batch-size", dest="batch", type=int, action=_Deprecated, use="--batch",
                   help=argparse.SUPPRESS)
    g.add_argument("--max-minutes", dest="time_limit", type=float, action=_Deprecated, use="--time-limit",
                   convert=lambda v: v or None, help=argparse.SUPPRESS)
    g.add_argument("--amp", dest="precision", choices=("auto", "bf16", "off"), action=_Deprecated,
                   use="--precision", convert=_OLD_PRECISION.get, help=argparse.SUPPRESS)
    g.add_argument("--bf16", dest="precision", nargs="?", const="on", choices=("auto", "on", "off"),
                   action=_Deprecated, use="--precision bf16", convert=_OLD_PRECISION.get, help=argparse.SUPPRESS)


@dataclass
class Runtime:
    """What the runtime flags resolve to, once, at the start of a run."""
    run: "RunFolder"
    device: torch.device
    precision: str          # "auto" until the trainer calls ``choose_precision``, then "fp32" or "bf16"
    resuming: bool          # --resume and OUT/ckpt-latest holds a run
    dist: Distributed       # this process's place in a torchrun job (rank 0 of 1 without one)
    measured: dict = field(default_factory=dict)   # what choose_precision timed (empty when not measured)

    def choose_precision(self, probe: Callable[[str], None] | None = None, resumed: str | None = None) -> str:
        """Settle ``--precision auto``: a resumed run keeps its recorded choice; otherwise
        ``measure_precision`` times ``probe`` (one forward and backward of the trainer's own model on
        one batch) under fp32 and bf16 on this machine; every process takes rank 0's choice."""
        if self.precision == "auto" and resumed in ("fp32", "bf16"):
            self.precision = resumed
        elif self.precision == "auto":
            self.measured = measure_precision(probe, self.device) if probe is not None else {}
            choice = self.measured.get("choice", resolve_precision("auto", self.device))
            flag = self.dist.broadcast_(torch.tensor([1.0 if choice == "bf16" else 0.0]))
            self.precision = "bf16" if flag[0] > 0 else "fp32"
        return self.precision


def start_run(a: argparse.Namespace) -> Runtime:
    """Threads and seeds set (the same on every process: each draws the same global batch), the
    torchrun job joined, the run folder made (written by rank 0 only)."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    dist, device = init_distributed(a.device)
    if a.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {a.precision!r}")
    run = RunFolder(a.out, writer=dist.is_main)
    precision = a.precision if a.precision == "auto" else resolve_precision(a.precision, device)
    return Runtime(run, device, precision, bool(a.resume) and run.can_resume(), dist)


def resolve_precision(precision: str, device: torch.device) -> str:
    """A precision without measuring: ``auto`` -> bf16 on a CUDA device that has it, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        dev = torch.device(device)
        return "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def median_seconds(fn: Callable[[], None], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return sorted(runs)[len(runs) // 2]


def measure_precision(probe: Callable[[str], None], device, repeats: int = 3, margin: float = 0.9) -> dict:
    """Median seconds of ``probe("fp32")`` and ``probe("bf16")`` after a warm-up of each; bf16 is the
    choice when it takes under ``margin`` of fp32's time. On CUDA bf16 is taken when supported (its
    gain there is not in doubt); on a CPU it depends on the machine and the width (AMX Xeons: 2x at
    width 256, 0.8x at 128; AVX-512-only EPYCs: slower), so it is measured."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return {"choice": resolve_precision("auto", dev), "measured": False}
    times = {prec: median_seconds(lambda: probe(prec), repeats) for prec in ("fp32", "bf16")}
    choice = "bf16" if times["bf16"] < margin * times["fp32"] else "fp32"
    return {"choice": choice, "measured": True, "fp32_s": round(times["fp32"], 4), "bf16_s": round(times["bf16"], 4),
            "bf16_speedup": round(times["fp32"] / times["bf16"], 3)}


def autocast(precision: str, device: torch.device):
    """The forward pass's context for a resolved precision."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- schedule

def lr_at(step: int, base: float, warmup: int, total: int, floor: float = 0.1, hold: float = 0.0,
          time_progress: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps; then flat until a share ``hold`` of the run; then a
    cosine to ``floor`` x base at its end. Progress is steps after warm-up over the steps left, or
    wall time over the time limit (``time_progress``), whichever is further along."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, max((step - warmup) / max(1, total - warmup), time_progress))
    t = 0.0 if p <= hold else (p - hold) / (1.0 - hold)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


class Clock:
    """Training wall time across resumed segments, and the time limit's share of it."""

    def __init__(self, before_s: float = 0.0, limit_min: float | None = None):
        self.before_s, self.limit_min, self.t0 = before_s, limit_min, time.time()

    @property
    def wall_s(self) -> float:
        return self.before_s + time.time() - self.t0

    @property
    def progress(self) -> float:
        return self.wall_s / (self.limit_min * 60) if self.limit_min else 0.0

    @property
    def over(self) -> bool:
        return bool(self.limit_min) and self.wall_s > self.limit_min * 60


class StopSignal:
    """SIGTERM (how service managers and schedulers stop a job) and SIGINT set ``requested``; the
    trainer finishes its step, saves and exits 0. Only installed in the main thread."""

    def __init__(self):
        self.requested = False
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._set)

    def _set(self, *_):
        self.requested = True


# ----------------------------------------------------------------------------- optimizer state

def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Adam(W) state as flat tensors ``"{param index}.{name}"``; param groups (lr, betas, ...) in
    the metadata. Atomic."""
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
               for pid, st in sd["state"].items() for k, v in st.items()}
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    tmp = Path(path).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"param_groups": json.dumps(groups)})
    tmp.replace(path)


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Restore what ``save_optimizer`` wrote into an optimizer built over the same parameters."""
    check_safetensors_file(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "param_groups" not in meta:
        raise CheckpointError(f"{path}: no param_groups metadata (not written by core.train.common.save_optimizer)")
    # JSON has no tuples: hyper-parameters such as betas come back as lists
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in json.loads(meta["param_groups"])]
    own = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in own]:
        raise CheckpointError(f"{path}: optimizer groups {[len(g['params']) for g in groups]} do not match this "
                              f"model's {[len(g['params']) for g in own]}")
    state: dict = {}
    for k, v in load_file(str(path)).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- run folder

def command_line() -> str:
    """The command that started this process, as a shell would take it again (``python -m core.train ...``)."""
    import shlex
    if sys.argv and sys.argv[0].replace(os.sep, "/").endswith("core/train/__main__.py"):
        return "python -m core.train " + shlex.join(sys.argv[1:])
    return shlex.join(sys.argv)


def machine() -> dict:
    """What a segment ran on: CPU model and cores, GPU, torch version."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:  # AMX (bf16 tile matmul) decides whether bf16 pays on a CPU
        amx = " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        amx = False
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "amx": amx, "gpu": gpu, "torch": torch.__version__}


class RunFolder:
    """``OUT/ckpt-latest``, ``OUT/ckpt-best``, ``OUT/log.jsonl``, ``OUT/manifest.json`` and the final
    model in ``OUT``. ``writer=False`` (torchrun ranks but 0): reads work, writes do nothing."""

    def __init__(self, root: str | Path, writer: bool = True):
        self.root, self.writer = Path(root), writer
        if writer:
            self.root.mkdir(parents=True, exist_ok=True)
        self.latest, self.best = self.root / "ckpt-latest", self.root / "ckpt-best"
        self.manifest_path = self.root / "manifest.json"
        self._log = None
        self._segment: dict | None = None

    def can_resume(self) -> bool:
        return (self.latest / STATE_NAME).is_file()

    def state(self) -> dict:
        try:
            return json.loads((self.latest / STATE_NAME).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.latest / STATE_NAME}: unreadable ({e})") from None

    def resume(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
        """Weights and optimizer from ``ckpt-latest``; returns its train state (step, wall_s, ...)."""
        from core.checkpoint import load_into
        load_into(model, self.latest)
        load_optimizer(opt, self.latest / OPTIMIZER_NAME)
        return self.state()

    def save(self, folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None,
             state: dict | None = None, extra=None) -> Path:
        """``model.save_pretrained`` (+ optimizer, state, ``extra(tmp_folder)``) into a temp folder,
        then swapped in for ``folder``; the manifest follows a save of ``ckpt-latest``."""
        folder = Path(folder)
        if not self.writer:
            return folder
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if opt is not None:
            save_optimizer(opt, tmp / OPTIMIZER_NAME)
        if state is not None:
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=2, default=str) + "\n")
        if extra is not None:
            extra(tmp)
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        if folder == self.latest and state is not None:
            self.update_segment(state)
        return folder

    def save_final(self, model: torch.nn.Module, extra=None) -> Path:
        """The final model's config.json + model.safetensors in ``OUT`` (a loadable checkpoint)."""
        if self.writer:
            model.save_pretrained(self.root)
            if extra is not None:
                extra(self.root)
        return self.root

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"segments": []}

    def open_segment(self, state: dict, precision: str, world: int = 1, extra: dict | None = None) -> None:
        """A new segment of training (a first run or a resume): command, machine, precision, processes."""
        if not self.writer:
            return
        self._segment = {"started": _now(), "ended": None, "step_from": int(state.get("step", 0)),
                         "step_to": int(state.get("step", 0)), "samples_from": int(state.get("samples_seen", 0)),
                         "samples_to": int(state.get("samples_seen", 0)), "wall_s": 0.0, "precision": precision,
                         "processes": world, "machine": machine(), "command": command_line(), **(extra or {})}
        self._wall_from = float(state.get("wall_s", 0.0))
        m = self.manifest()
        m["segments"].append(self._segment)
        self._write_manifest(m)

    def update_segment(self, state: dict, ended: bool = False) -> None:
        """The open segment's progress, written with every ``ckpt-latest`` (and at its end)."""
        if not self.writer or self._segment is None:
            return
        self._segment.update(step_to=int(state.get("step", 0)), samples_to=int(state.get("samples_seen", 0)),
                             wall_s=round(float(state.get("wall_s", 0.0)) - self._wall_from, 1),
                             ended=_now() if ended else None)
        m = self.manifest()
        m["segments"][-1] = self._segment
        m.update(step=self._segment["step_to"], samples_seen=self._segment["samples_to"],
                 wall_s=round(float(state.get("wall_s", 0.0)), 1), updated=_now())
        self._write_manifest(m)

    def _write_manifest(self, m: dict) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=2) + "\n")
        tmp.replace(self.manifest_path)

    # ------------------------------------------------------------------ log
    def log(self, rec: dict) -> None:
        if not self.writer:
            return
        if self._log is None:
            self._log = open(self.root / "log.jsonl", "a")
        self._log.write(json.dumps(rec) + "\n")
        self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- resume checks

def check_resume_args(saved: dict, now: dict, schedule: tuple[str, ...], model: tuple[str, ...],
                      force_schedule: bool) -> None:
    """Refuse a resume whose model flags, or (without ``--force-schedule``) schedule flags, differ
    from the run's, naming each difference."""
    def same(k, a, b):  # --config is JSON: the same whatever its key order or spacing
        if k == "config" and isinstance(a, str) and isinstance(b, str) and a != b:
            try:
                return json.loads(a) == json.loads(b)
            except ValueError:
                return False
        return a == b

    def diff(keys):
        return [f"--{k.replace('_', '-')} {saved[k]!r} -> {now[k]!r}" for k in keys
                if k in saved and k in now and not same(k, saved[k], now[k])]
    bad_model, bad_schedule = diff(model), diff(schedule)
    if bad_model:
        raise CheckpointError("--resume: the run's model differs from these flags: " + "; ".join(bad_model)
                              + " (start a new run, or resume with the run's flags)")
    if bad_schedule and not force_schedule:
        raise CheckpointError("--resume: the schedule differs from the run's: " + "; ".join(bad_schedule)
                              + " (pass --force-schedule to continue with the new one)")
