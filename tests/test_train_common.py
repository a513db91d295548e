"""The training helpers every trainer shares (core/train/common.py)."""
from __future__ import annotations

import argparse
import json
import os
import signal

import pytest
import torch

from core.checkpoint import CheckpointError
from core.train.common import (RunFolder, StopSignal, add_runtime_args, load_optimizer, lr_at, resolve_precision,
                               save_optimizer)


def test_lr_schedule_warms_up_holds_then_ends_at_the_floor():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.1)                       # cosine to the floor
    assert lr_at(60, 1.0, 10, 110, hold=0.7) == pytest.approx(1.0)             # still flat at half the run
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.55)                      # cosine midpoint without a hold
    assert lr_at(20, 1.0, 10, 110, time_progress=1.0) == pytest.approx(0.1)    # the time limit paces it
    lrs = [lr_at(s, 1.0, 10, 110, hold=0.3) for s in range(10, 111)]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))


def _adamw(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW([{"params": m[0].parameters(), "lr_mult": 10.0}, {"params": m[1].parameters()}],
                            lr=1e-2, betas=(0.9, 0.95))
    return m, opt


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    m, opt = _adamw()
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    opt.param_groups[1]["lr"] = 3e-3
    save_optimizer(opt, tmp_path / "opt.safetensors")
    assert (tmp_path / "opt.safetensors").read_bytes()[:2] not in (b"\x80\x02", b"PK")  # not a pickle
    m2, opt2 = _adamw(1)
    load_optimizer(opt2, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))
    other = torch.optim.AdamW(torch.nn.Linear(4, 2).parameters())
    with pytest.raises(CheckpointError, match="groups"):
        load_optimizer(other, tmp_path / "opt.safetensors")


def _parse(argv):
    ap = argparse.ArgumentParser()
    add_runtime_args(ap, batch=8)
    return ap.parse_args(argv)


@pytest.mark.parametrize("old, new, expect", [
    (["--batch-size", "3"], ["--batch", "3"], ("batch", 3)),
    (["--max-minutes", "5"], ["--time-limit", "5"], ("time_limit", 5.0)),
    (["--max-minutes", "0"], [], ("time_limit", None)),          # the tokenizer's old 0 = no limit
    (["--amp", "off"], ["--precision", "fp32"], ("precision", "fp32")),
    (["--amp", "bf16"], ["--precision", "bf16"], ("precision", "bf16")),
    (["--bf16"], ["--precision", "bf16"], ("precision", "bf16")),   # the reconstruction trainer's switch
    (["--bf16", "off"], ["--precision", "fp32"], ("precision", "fp32")),
    (["--bf16", "auto"], ["--precision", "auto"], ("precision", "auto")),
])
def test_old_flag_spellings_keep_working_with_a_note(old, new, expect, capsys):
    got = _parse(old)
    assert "is deprecated" in capsys.readouterr().err and getattr(got, expect[0]) == expect[1]
    assert vars(got) == vars(_parse(new))
    assert capsys.readouterr().err == ""


def test_every_trainer_takes_the_same_runtime_flags(capsys):
    from core.train import nvs, recon, tokenizer
    for mod in (tokenizer, nvs, recon):
        with pytest.raises(SystemExit):
            mod.main(["--help"])
        out = capsys.readouterr().out
        for flag in ("--batch", "--threads", "--time-limit", "--resume", "--precision", "--device", "--seed"):
            assert flag in out, (mod.__name__, flag)
        assert "--batch-size" not in out and "--max-minutes" not in out  # old spellings are not advertised


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("fp16", torch.device("cpu"))


def test_run_folder_swaps_checkpoints_in_whole(tmp_path):
    m, opt = _adamw()
    m.save_pretrained = lambda f: (f.mkdir(parents=True, exist_ok=True), (f / "model.bin").write_text("w"))
    run = RunFolder(tmp_path / "run")
    assert not run.can_resume()
    run.save(run.latest, m, opt, {"step": 3})
    run.save(run.latest, m, opt, {"step": 4})
    assert run.can_resume() and run.state()["step"] == 4
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ckpt-latest"]  # no temp folders left
    run.log({"step": 4})
    run.close()
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text()) == {"step": 4}


def test_sigterm_asks_for_a_clean_stop():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stop = StopSignal()
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


@pytest.mark.parametrize("model", ["recon", "nvs"])
def test_bench_train_times_both_precisions_and_says_what_auto_picks(model, tmp_path):
    from core.bench.train import bench_size
    if model == "recon":
        from test_recon import TINY as cfg
    else:
        cfg = dict(depth=1, width=32, num_heads=2, vocab_size=64, latent_dim=8, patch_nums=(1, 2, 4), resolution=32,
                   embed_dim=16, cnn_width=8, cnn_resolution=16)
    data = None
    if model == "recon":
        from core.recon.toydata import write_dataset
        data = write_dataset(tmp_path / "toy", n_train=2, n_val=1, size=32, n_views=4)
    res = bench_size(model, dict(cfg), 2, 1, torch.device("cpu"), compile_=False, data=data)
    assert res["fp32"]["step_s"] > 0 and res["bf16"]["samples_per_s"] > 0 and res["bf16_speedup"] > 0
    assert res["auto_picks"]["choice"] in ("fp32", "bf16") and res["auto_picks"]["measured"]
    if model == "recon":
        assert 0 < res["data"]["data_wait_fraction"] < 1 and res["data"]["objects"] == 2


def test_resume_check_reads_a_json_config_by_value_not_by_spelling():
    import pytest
    from core.checkpoint import CheckpointError
    from core.train.common import check_resume_args

    saved = {"config": '{"a": 1, "b": [2, 3]}', "steps": 10}
    check_resume_args(saved, {"config": '{"b": [2,3], "a": 1}', "steps": 10}, ("steps",), ("config",), False)
    with pytest.raises(CheckpointError, match="model differs"):
        check_resume_args(saved, {"config": '{"a": 2, "b": [2, 3]}', "steps": 10}, ("steps",), ("config",), False)
    with pytest.raises(CheckpointError, match="schedule differs"):
        check_resume_args(saved, {"config": saved["config"], "steps": 20}, ("steps",), ("config",), False)
