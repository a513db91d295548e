"""torchrun data parallelism: 2 CPU processes (gloo) train to the same weights as one process on the
same global batch, for each of the three trainers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_nvs import TOK_CFG, make_dataset
from test_recon import TINY
from test_tokenizer import make_data, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def train(model: str, args: list[str], procs: int, tmp: Path) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(launcher + ["-m", "core.train", model, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, start: Path | None = None, tol: float = 2e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point())
    assert worst < tol, f"largest weight difference {worst:g}"
    if start is not None:  # and training moved them, so the comparison means something
        w0 = weights(start)
        assert max(float((w0[k].float() - wa[k].float()).abs().max()) for k in w0 if w0[k].is_floating_point()) > 10 * tol


def run_pair(model: str, common: list[str], tmp: Path) -> tuple[Path, Path]:
    one, two = tmp / "one", tmp / "two"
    r1 = train(model, common + ["--out", str(one)], 1, tmp)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = train(model, common + ["--out", str(two)], 2, tmp)
    assert r2.returncode == 0, r2.stderr[-2000:]
    state = json.loads((two / "ckpt-latest" / "train_state.json").read_text())
    manifest = json.loads((two / "manifest.json").read_text())
    assert state["samples_seen"] == state["step"] * 4 and manifest["segments"][-1]["processes"] == 2
    return one, two


def test_recon_two_processes_match_one(tmp_path):
    from core.recon.toydata import write_dataset
    data = write_dataset(tmp_path / "toy", n_train=3, n_val=1, size=32, n_views=4)
    common = ["--data", str(data), "--config", json.dumps(TINY), "--batch", "4", "--rays", "32", "--samples", "12",
              "--steps", "3", "--save-every", "3", "--val-every", "100", "--lr", "1e-3", "--warmup", "1",
              "--precision", "fp32", "--threads", "1"]
    one, two = run_pair("recon", common, tmp_path)
    assert_same_weights(one, two)


def test_nvs_two_processes_match_one(tmp_path):
    from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
    make_dataset(tmp_path / "data")
    torch.manual_seed(0)
    MultiScaleVQVAE(TokenizerConfig(**TOK_CFG)).save_pretrained(tmp_path / "tokenizer")
    common = ["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tokenizer"), "--cache",
              str(tmp_path / "cache"), "--batch", "4", "--depth", "1", "--width", "32", "--heads", "2", "--embed-dim",
              "16", "--steps", "3", "--val-every", "100", "--psnr-every", "100", "--ckpt-every", "3", "--cond-drop", "0",
              "--lr", "1e-3", "--warmup", "1", "--precision", "fp32", "--threads", "1"]
    one, two = run_pair("nvs", common, tmp_path)
    assert_same_weights(one, two)


def test_tokenizer_two_processes_match_one(tmp_path):
    data = make_data(tmp_path / "data")
    common = ["--data", str(data), "--config", json.dumps(tiny_config().to_dict()), "--batch", "4", "--steps", "3",
              "--val-every", "100", "--val-images", "2", "--restart-window", "2", "--lr", "1e-3", "--warmup", "1",
              "--precision", "fp32", "--threads", "1"]
    one, two = run_pair("tokenizer", common, tmp_path)   # a codebook restart at step 2 too: hits summed, rank 0's kept
    assert_same_weights(one, two)


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    from core.recon.toydata import write_dataset
    data = write_dataset(tmp_path / "toy", n_train=2, n_val=1, size=32, n_views=4)
    r = train("recon", ["--data", str(data), "--out", str(tmp_path / "r"), "--config", json.dumps(TINY), "--batch", "3",
                        "--steps", "1", "--precision", "fp32"], 2, tmp_path)
    assert r.returncode != 0 and "--batch 3 cannot be split over 2 processes" in r.stderr


@pytest.mark.parametrize("n", [1])
def test_distributed_helpers_are_inert_in_one_process(n):
    from core.train.distributed import Distributed
    d = Distributed()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    d.all_reduce_grads([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and d.shard(4) == slice(0, 4) and d.mean(1.5) == 1.5
    assert d.agree_to_stop(True) and not d.agree_to_stop(False)


def test_gpu_recipe_trains_in_resumable_chunks_on_cpu(tmp_path):
    """scripts/train_gpu.sh on a CPU: two short chunks, the second resuming where the first saved."""
    from core.recon.toydata import write_dataset
    data = write_dataset(tmp_path / "toy", n_train=2, n_val=1, size=32, n_views=4)
    run = tmp_path / "run"
    env = dict(os.environ, DATA=str(data), CHUNK_MIN="0.12", TOTAL_MIN="30", NPROC="1", HF_HUB_OFFLINE="1")
    cmd = ["bash", "scripts/train_gpu.sh", "recon", str(run), "--config", json.dumps(TINY), "--batch", "2",
           "--rays", "16", "--samples", "8", "--save-every", "5", "--threads", "1", "--precision", "fp32"]
    steps = []
    for _ in range(2):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        steps.append(json.loads(r.stdout)["step"])
    segments = json.loads((run / "manifest.json").read_text())["segments"]
    assert 0 < steps[0] < steps[1] and len(segments) == 2 and segments[1]["step_from"] == steps[0]
    assert "--resume" in segments[1]["command"] and segments[0]["ended"]
