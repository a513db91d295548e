"""`python -m core.train status RUN`: where a training run stands, as JSON.

Reads the run folder every trainer writes (``core.train.common.RunFolder``): the manifest's segments
(steps, samples, wall time, machine, precision, processes, command of each), the latest checkpoint's
state and age, the best validation metric, and the last log record. Writes nothing.
"""
from __future__ import annotations

import argparse
import json
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train status", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (the --out of core.train tokenizer|nvs|recon)")
    a = ap.parse_args(argv)
    emit_json(status(Path(a.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
