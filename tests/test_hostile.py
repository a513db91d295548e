"""The hostile suite (viewer/hostile.py) and the soak mode of the load test, at small sizes."""
from __future__ import annotations

import json

from viewer.backend import SessionStore
from viewer_fakes import viewer_backend


def test_hostile_suite_passes_with_a_canary_served_throughout(tmp_path):
    import app
    from core.bench.app import free_port
    from viewer import hostile
    backend = viewer_backend(SessionStore(tmp_path / "sessions", max_sessions=8))
    run = app.launch(port=free_port(), backend=backend, quiet=True)
    try:
        res = hostile.run(run.url, sessions=12, clients=2, tmp=tmp_path / "h")
        assert len(backend.sessions) <= 8      # the flood is capped
    finally:
        run.close()
    assert res["pass"], json.dumps({k: v for k, v in res["cases"].items() if not v["ok"]}) + str(res["canary"])
    expected = {"image_thin_40000x1", "image_bomb", "image_huge_upload", "knob_seed_negative", "knob_cfg_1e6",
                "path_outside_upload_folder", "generate_before_new_session", "stream_after_abandoned_streams",
                "session_flood", "concurrent_clients", "image_strip_20_to_1_accepted"}
    assert expected <= set(res["cases"]) and res["canary"]["views"] > 0


def test_soak_reports_memory_at_warm_start_peak_and_after_idle(tmp_path):
    """The real server (shipped checkpoints) through one small round: the JSON the full soak run prints."""
    from viewer import loadtest
    out = tmp_path / "soak.json"
    rc = loadtest.main(["--soak", "--rounds", "1", "--sessions", "6", "--clients", "2", "--idle-seconds", "2",
                        "--out", str(out)])
    res = json.loads(out.read_text())
    assert "error" not in res and res["hostile"][0]["pass"] and res["hostile"][0]["canary_views"] > 0, res
    rss = res["rss_mb"]
    assert 0 < rss["warm_start"] <= rss["peak"] and rss["after_idle"] > 0 and rss["target_within"] == 300
    # the memory verdict needs the full idle wait (the janitor runs every 15 s): here only its bookkeeping
    assert res["pass"] == (rss["after_idle_minus_warm_start"] <= 300) and rc == (0 if res["pass"] else 1)
