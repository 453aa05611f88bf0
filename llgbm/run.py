"""Run the lab's notebooks through papermill in phase order, then write reports/<profile>/REPORT.md.

    python -m llgbm.run --profile quick                # every notebook
    python -m llgbm.run --profile smoke --only 00_baseline

A failing notebook stops the run and prints the failing cell's error; the executed copy (with
outputs) is kept under reports/<profile>/_executed/ for inspection."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .report import REPO_ROOT, reports_root, write_report
from .utils import PROFILES, atomic_write_json

NOTEBOOKS = REPO_ROOT / "notebooks"
KERNEL = "llgbm"


def notebooks(only: list[str] | None = None) -> list[Path]:
    """Notebooks in phase order (00, 01, …, 04, 04b, 05, 10, …); `only` filters by stem."""
    found = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if only:
        stems = {p.stem for p in found}
        unknown = [s for s in only if s not in stems]
        if unknown:
            raise SystemExit(f"unknown notebook(s) {unknown}; known: {', '.join(sorted(stems))}")
        found = [p for p in found if p.stem in only]
    return found


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    if kernel not in KernelSpecManager().find_kernel_specs():
        raise SystemExit(f"Jupyter kernel {kernel!r} is not installed; run `make setup` (it registers it), "
                         f"or pass --kernel with one of: {', '.join(KernelSpecManager().find_kernel_specs())}")


def run_notebook(nb: Path, profile: str, kernel: str = KERNEL, timeout: int = 3600, **params) -> Path:
    import papermill as pm
    out = reports_root() / profile / "_executed" / nb.name
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(nb), str(out), parameters=dict(profile=profile, **params), kernel_name=kernel,
                        execution_timeout=timeout, cwd=str(nb.parent), progress_bar=False)
    return out


def record_timing(profile: str, stem: str, seconds: float) -> None:
    """Wall time of each notebook's latest run, kept across partial reruns (`--only`)."""
    path = reports_root() / profile / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[stem] = dict(seconds=round(seconds, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_json(path, timings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    ap.add_argument("--kernel", default=KERNEL)
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell execution timeout, seconds")
    args = ap.parse_args(argv)
    import papermill as pm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _check_kernel(args.kernel)
    selected = notebooks(args.only)
    for nb in selected:
        t0 = time.time()
        print(f"[llgbm.run] {nb.name} ({args.profile}) …", flush=True)
        try:
            run_notebook(nb, args.profile, args.kernel, args.timeout)
        except pm.PapermillExecutionError as e:
            print(f"[llgbm.run] {nb.name} FAILED in cell {e.exec_count}: {e.ename}: {e.evalue}", file=sys.stderr)
            print("".join(e.traceback[-3:]) if e.traceback else "", file=sys.stderr)
            print(f"[llgbm.run] executed copy: {reports_root() / args.profile / '_executed' / nb.name}",
                  file=sys.stderr)
            return 1
        seconds = time.time() - t0
        record_timing(args.profile, nb.stem, seconds)
        print(f"[llgbm.run] {nb.name} done in {seconds:.0f}s", flush=True)
    path = write_report(args.profile, notebooks())
    print(f"[llgbm.run] report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
