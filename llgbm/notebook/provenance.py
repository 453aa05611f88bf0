"""Which code a report came from: each notebook run records the git commit it ran at and whether the
code it runs had uncommitted changes; REPORT.md then says, per notebook, whether its numbers are from
the committed code or older than it, and names the files that changed since.

"The code it runs" is the notebook and every llgbm/ and geomlib/ module it can import: the closure
of its import statements through the project's modules, read from the source (`code_files`). A
change elsewhere in the repository does not make a report stale; one in that closure does."""
from __future__ import annotations

import ast
import json
import subprocess
from functools import lru_cache
from pathlib import Path

from llgbm.core.utils import REPO_ROOT

PACKAGES = ("llgbm", "geomlib")
# Modules a notebook imports that only write the suite's REPORT.md (run times, peak use, peer goals,
# artefact table) or record which code ran (this one), never a notebook's results: a change to them
# leaves every notebook's numbers as they were, so it does not make a report "older than the committed code".
SUITE_REPORT_ONLY = frozenset({"llgbm.notebook.usage", "llgbm.notebook.provenance"})


def _module_file(name: str) -> Path | None:
    path = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(source: str) -> set[str]:
    """Project module names an import statement anywhere in `source` may load (for `from a import b`,
    both a and a.b; every parent package too, since importing a.b runs a/__init__.py)."""
    names = set()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in found:
            parts = name.split(".")
            if parts[0] in PACKAGES:
                names |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return names


@lru_cache(maxsize=None)
def code_files(stem: str) -> tuple[str, ...]:
    """Repo-relative paths of notebook `stem` and of the project modules it can import, sorted."""
    nb = REPO_ROOT / "notebooks" / f"{stem}.ipynb"
    cells = json.loads(nb.read_text())["cells"] if nb.exists() else []
    todo = set()
    for cell in cells:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"])
            todo |= _imports("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    seen: set[str] = set()
    files = {nb.relative_to(REPO_ROOT).as_posix()}
    while todo:
        name = todo.pop()
        if name in seen or name in SUITE_REPORT_ONLY:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            files.add(path.relative_to(REPO_ROOT).as_posix())
            todo |= _imports(path.read_text()) - seen
    return tuple(sorted(files))


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
    diff = _git("diff", "--quiet", "HEAD", "--", *code_files(stem))
    return dict(commit=head.stdout.strip(), dirty=bool(diff is None or diff.returncode))


def changed_since(commit: str, stem: str) -> list[str] | None:
    """The files of notebook `stem`'s code (`code_files`) that changed between `commit` and HEAD (None:
    the commit is not in this checkout's history)."""
    diff = _git("diff", "--name-only", commit, "HEAD", "--", *code_files(stem))
    return None if diff is None or diff.returncode else diff.stdout.split()


def provenance_line(stem: str, state: dict | None) -> str:
    """One line for REPORT.md: the commit a notebook's outputs came from, and whether the notebook's
    code (the notebook and the modules it imports) has changed since, naming the files if so."""
    if not state or not state.get("commit"):
        return "Code: not recorded (a run from before runs recorded their commit): **may be older than the committed code**."
    commit = state["commit"][:10]
    if state.get("dirty"):
        return f"Code: commit {commit} **with uncommitted changes**: not a run of committed code."
    changed = changed_since(state["commit"], stem)
    if changed is None:
        return f"Code: commit {commit} (not found in this checkout's history)."
    if changed:
        shown = ", ".join(f"`{p}`" for p in changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        return (f"Code: commit {commit}; **older than the committed code**: {len(changed)} file(s) it runs changed since "
                f"({shown}): rerun it.")
    return f"Code: commit {commit}; the code it runs (the notebook and {len(code_files(stem)) - 1} modules) is unchanged since."
