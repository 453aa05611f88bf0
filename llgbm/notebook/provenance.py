"""Which code a report came from: each notebook run records the git commit it ran at and whether the
code it runs (llgbm/, geomlib/, its notebook) had uncommitted changes; REPORT.md then says, per
notebook, whether its numbers are from the committed code or older than it."""
from __future__ import annotations

import subprocess

from llgbm.core.utils import REPO_ROOT


def _code(stem: str) -> list[str]:
    return ["llgbm", "geomlib", f"notebooks/{stem}.ipynb"]


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None


def code_state(stem: str) -> dict:
    """{"commit": HEAD or None (not a git checkout), "dirty": the notebook's code differs from it}."""
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode:
        return dict(commit=None, dirty=None)
    diff = _git("diff", "--quiet", "HEAD", "--", *_code(stem))
    return dict(commit=head.stdout.strip(), dirty=bool(diff is None or diff.returncode))


def provenance_line(stem: str, state: dict | None) -> str:
    """One line for REPORT.md: the commit a notebook's outputs came from, and whether the notebook's
    code (llgbm/, geomlib/, the notebook) has changed since, which makes them older than the code."""
    if not state or not state.get("commit"):
        return "Code: not recorded (a run from before runs recorded their commit): **may be older than the committed code**."
    commit = state["commit"][:10]
    if state.get("dirty"):
        return f"Code: commit {commit} **with uncommitted changes**: not a run of committed code."
    diff = _git("diff", "--quiet", state["commit"], "HEAD", "--", *_code(stem))
    if diff is None or diff.returncode not in (0, 1):
        return f"Code: commit {commit} (not found in this checkout's history)."
    if diff.returncode:
        return f"Code: commit {commit}; **older than the committed code** (llgbm/, geomlib/ or the notebook changed since): rerun it."
    return f"Code: commit {commit}, the committed code of this notebook."
