"""The project's files speak of the project (dates, commits, machines), never of work sessions:
no "session 12", "this session", "work period" history in the docs or the code. Also: the README
stays short, and every picture the docs show exists and is small."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__"}      # anywhere
SKIP_TOP = {"data", "runs", "outputs", "tmp"}                              # datasets and run folders (ignored by git)
SUFFIXES = {".md", ".py", ".sh", ".txt", ".toml", ".cfg"}

# The app has browser sessions ("the caller's session", "--sessions 300", "this session's folder"):
# those stay allowed. What is refused is a work log: a numbered session, "this/last/... session"
# as a period of work, a "work period" or "work session".
WORK_LOG = re.compile(r"""
      (?<![-\w])sessions?[\s_-]*\d+                                       # session 3, sessions 3-5, session-13
    | \b(?:last|previous|earlier|next|later)\s+(?:work\s+)?sessions?\b   # last session, the previous session's
    | \b(?:this|that)\s+(?:work\s+)?session\b(?!['’]s)                    # (an app's "this session's files" is fine)
    | \bwork[\s-]+(?:period|session)s?\b
    | \btoday['’]s\b                                                     # today's build: a date or commit instead
""", re.IGNORECASE | re.VERBOSE)


def project_files() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        top = Path(folder) == ROOT
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not (top and d in SKIP_TOP)
                   and (not d.startswith(".") or d == ".ci")]
        for name in files:
            p = Path(folder) / name
            if (p.suffix in SUFFIXES or p.parent.name == ".ci") and p != Path(__file__).resolve():
                out.append(p)
    return sorted(out)


def work_log_lines(text: str) -> list[tuple[int, str]]:
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if WORK_LOG.search(line)]


@pytest.mark.parametrize("sample", [
    "Measured in session 12 on the Xeon.",
    "stage 1 (shipped in sessions 3-5)",
    "two session-13 ideas that did not help",
    "This session re-ran the benchmark.",
    "the last session's run",
    "on 100 of today's 422 objects",
    "what each work period tried",
    "Work sessions 4 and 5 trained it.",
])
def test_the_check_catches_work_log_wording(sample):
    assert work_log_lines(sample), sample


@pytest.mark.parametrize("sample", [
    "python -m viewer.loadtest --soak --sessions 300 --clients 8",
    "Every endpoint works on the caller's session, so call /new_session first.",
    "exports live in a per-session temp folder, removed with this session's files",
    "Session code: paste it under the 3D view.",
    "more than 64 sessions are live",
])
def test_the_check_allows_the_apps_sessions(sample):
    assert not work_log_lines(sample), sample


def test_project_files_have_no_work_log_wording():
    files = project_files()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"README.md", "CHANGELOG.md", "checkpoints/nvs/README.md", "core/data/io.py"} <= names, "missed files"
    found = [f"{p.relative_to(ROOT)}:{i}: {line}" for p in files
             for i, line in work_log_lines(p.read_text(errors="replace"))]
    assert not found, "work-log wording (say the date, commit or machine instead):\n" + "\n".join(found)


def test_readme_is_short_and_its_pictures_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 260, "the README is the current state in ~250 lines; history is in git"
    first_screen = "\n".join(readme.splitlines()[:40])
    for picture in ("assets/readme/app.png", "assets/readme/orbit.gif"):
        assert picture in first_screen, f"{picture} belongs on the README's first screen"


@pytest.mark.parametrize("doc", ["README.md", "checkpoints/nvs/README.md", "checkpoints/recon/README.md",
                                 "checkpoints/tokenizer/README.md"])
def test_pictures_in_docs_exist_and_are_small(doc):
    path = ROOT / doc
    text = path.read_text()
    pictures = re.findall(r'!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*\bsrc="([^"]+)"', text)
    for target in (a or b for a, b in pictures):
        file = (path.parent / target).resolve()
        assert file.is_file(), f"{doc}: {target} does not exist"
        assert file.stat().st_size < 1_000_000, f"{doc}: {target} is {file.stat().st_size} bytes (keep it under 1 MB)"
