"""`python -m core.train status RUN [--markdown]`: where a training run stands, as JSON.

Reads the run folder every trainer writes (``core.train.common.RunFolder``): the manifest's segments
(steps, samples, wall time, machine, precision, processes, command of each), the latest checkpoint's
state and age, the best validation metric, and the last log record. Writes nothing. ``--markdown``
prints the run's record for a model card instead: a table of its segments (dates, steps, samples,
wall time, machine, precision and the measured bf16/fp32 speed behind an ``auto`` choice) and the
exact command of each.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from core.data.io import DataError
from core.report import emit_json


def status(run: Path) -> dict:
    from core.train.common import STATE_NAME, RunFolder
    rf = RunFolder(run, writer=False)
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    if not rf.can_resume() and not rf.manifest_path.is_file():
        raise DataError(f"{run}: not a run folder (no ckpt-latest/{STATE_NAME} or manifest.json; "
                        "is it the --out of a core.train command?)")
    out: dict = {"run": str(run)}
    if rf.can_resume():
        st = rf.state()
        args = st.get("args", {})
        total = args.get("steps")
        out.update(step=st.get("step"), steps=total, samples_seen=st.get("samples_seen"),
                   wall_h=round(float(st.get("wall_s", 0.0)) / 3600, 2), precision=st.get("precision"),
                   time_limit_min=args.get("time_limit"),
                   progress=round(st["step"] / total, 3) if total else None,
                   latest_checkpoint_age_s=round(time.time() - (rf.latest / STATE_NAME).stat().st_mtime),
                   best={k: v for k, v in st.items() if k.startswith("best_")})
        out["finished"] = bool(total) and st.get("step", 0) >= total and (run / "model.safetensors").is_file()
    m = rf.manifest()
    out["segments"] = [{k: g.get(k) for k in ("started", "ended", "step_from", "step_to", "wall_s", "precision",
                                               "processes", "command")} | {"machine": (g.get("machine") or {}).get("cpu"),
                                                                           "gpu": (g.get("machine") or {}).get("gpu")}
                       for g in m.get("segments", [])]
    log = run / "log.jsonl"
    if log.is_file():
        lines = log.read_text().strip().splitlines()
        out["last_log"] = json.loads(lines[-1]) if lines else None
        vals = [json.loads(x) for x in lines if '"val_' in x]
        out["last_validation"] = vals[-1] if vals else None
    return out


def markdown(run: Path) -> str:
    """The training record of a run for its model card (from manifest.json)."""
    from core.train.common import RunFolder
    m = RunFolder(run, writer=False).manifest()
    if not m.get("segments"):
        raise DataError(f"{run}: no manifest.json segments to report")
    rows = ["| # | started (UTC) | steps | samples | wall | machine | precision | processes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    cmds = []
    for i, g in enumerate(m["segments"], 1):
        mach = g.get("machine") or {}
        where = mach.get("gpu") or f"{mach.get('cpu')} ({mach.get('cores')} cores{', AMX' if mach.get('amx') else ''})"
        meas = g.get("precision_measured") or {}
        prec = g.get("precision", "?") + (f" (auto: bf16 {meas['bf16_speedup']:.2f}x fp32)" if meas.get("measured") else "")
        rows.append(f"| {i} | {(g.get('started') or '')[:16].replace('T', ' ')} | {g['step_from']}-{g['step_to']} | "
                    f"{g.get('samples_to', 0) - g.get('samples_from', 0):,} | {g.get('wall_s', 0) / 3600:.2f} h | "
                    f"{where} | {prec} | {g.get('processes', 1)} |")
        cmds.append(f"# segment {i}\n" + re.sub(r"^\S*core/train/__main__\.py", "python -m core.train", g.get("command", "")))
    total = f"Total: {m.get('step', 0):,} steps, {m.get('samples_seen', 0):,} samples, {m.get('wall_s', 0) / 3600:.2f} h."
    return "\n".join(rows) + "\n\n" + total + "\n\n```\n" + "\n".join(cmds) + "\n```\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train status", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (the --out of core.train tokenizer|nvs|recon)")
    ap.add_argument("--markdown", action="store_true", help="print the run's training record for a model card")
    a = ap.parse_args(argv)
    if a.markdown:
        print(markdown(Path(a.run)), end="")
        return 0
    emit_json(status(Path(a.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
