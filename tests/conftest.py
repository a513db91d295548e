import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Everything the suite and the servers it starts write to a temp dir (Gradio's cache, gradio_client's
# downloads and its empty per-request folders, pytest's tmp_path) lands in one folder, removed at the end.
_TMP = tempfile.mkdtemp(prefix="vantage-tests-")
os.environ["TMPDIR"] = _TMP
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_TMP, "gradio")
tempfile.tempdir = _TMP
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)
