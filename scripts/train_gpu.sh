#!/usr/bin/env bash
# One chunk of a resumable training run on this machine's GPUs (or CPU), for short rentals.
#
#   scripts/train_gpu.sh MODEL RUN [trainer flags...]      MODEL: tokenizer | nvs | recon
#
# Run it again (same arguments) on the same or another machine holding RUN: each call trains at most
# CHUNK_MIN minutes (default 9), then SIGTERM makes the trainer save its checkpoint and exit; the next
# call resumes from RUN/ckpt-latest. The schedule spans TOTAL_MIN minutes of training in all
# (--time-limit), so the learning rate ends where a single long run would. The corpus is built into
# DATA first when it is missing (Mesa's EGL renders it; `python -m core.data corpus --help`).
# Environment: DATA (data/corpus), CHUNK_MIN (9), TOTAL_MIN (600), NPROC (the GPUs, else 1).
# `python -m core.train status RUN` says where the run stands.
set -euo pipefail
MODEL=${1:?usage: scripts/train_gpu.sh tokenizer|nvs|recon RUN [trainer flags...]}
RUN=${2:?usage: scripts/train_gpu.sh tokenizer|nvs|recon RUN [trainer flags...]}
shift 2
cd "$(dirname "$0")/.."
DATA=${DATA:-data/corpus}
CHUNK_MIN=${CHUNK_MIN:-9}
TOTAL_MIN=${TOTAL_MIN:-600}
NPROC=${NPROC:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}

if [ ! -d "$DATA/train" ]; then
  echo "building the corpus into $DATA" >&2
  python -m core.data corpus --out "$DATA" --workers "$(nproc)"
fi
resume=()
if [ -f "$RUN/ckpt-latest/train_state.json" ]; then resume=(--resume); fi
if [ "$NPROC" -gt 1 ]; then
  launch=(torchrun --standalone --nproc_per_node "$NPROC" -m core.train "$MODEL")
else
  launch=(python -m core.train "$MODEL")
fi
# SIGTERM at the chunk's end: the trainer finishes its step, saves ckpt-latest and exits 0
set +e
timeout --signal=TERM --kill-after=120 "${CHUNK_MIN}m" "${launch[@]}" --data "$DATA" --out "$RUN" \
  --device auto --time-limit "$TOTAL_MIN" "${resume[@]}" "$@" 1>&2   # progress on stderr, status JSON on stdout
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then exit "$rc"; fi
python -m core.train status "$RUN"
