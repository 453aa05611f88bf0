"""Did a change move any number? Every notebook's metrics.json in one reports folder against another
(e.g. the committed reports/quick against a rerun), equal within float tolerance; wall-clock and
machine-speed metrics are listed apart, as they change from run to run by nature.

    python -m llgbm.notebook.diff reports/quick /tmp/rerun/reports/quick [--rtol 1e-6]"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

# Metrics that measure the machine or the clock, not the model: excepted from equality, listed.
TIMING = re.compile(r"(^|_)(seconds|minutes|ms)($|_)|_per_s($|_)|per_step|speedup|peak_fraction|peak_mem|rss|"
                    r"throughput|overhead_ratio|backward_over_forward|over_merged|gflops|speed|scaling_exponent")


def _equal(a, b, rtol: float, atol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= atol + rtol * abs(b)
    return a == b


def diff_metrics(a: Path | str, b: Path | str, rtol: float = 1e-6, atol: float = 1e-9) -> dict:
    """{"changed": [(notebook, metric, a, b)], "timing": [(notebook, metric)], "only_a"/"only_b": [...],
    "compared": n} over the notebooks whose metrics.json both folders hold."""
    a, b = Path(a), Path(b)
    out = dict(changed=[], timing=[], only_a=[], only_b=[], compared=0, notebooks=[])
    for ma in sorted(a.glob("*/metrics.json")):
        mb = b / ma.parent.name / "metrics.json"
        if not mb.exists():
            continue
        out["notebooks"].append(ma.parent.name)
        da, db = json.loads(ma.read_text()), json.loads(mb.read_text())
        for k in sorted(set(da) | set(db)):
            if k not in db or k not in da:
                out["only_a" if k in da else "only_b"].append((ma.parent.name, k))
            elif TIMING.search(k):
                out["timing"].append((ma.parent.name, k))
            else:
                out["compared"] += 1
                if not _equal(da[k], db[k], rtol, atol):
                    out["changed"].append((ma.parent.name, k, da[k], db[k]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-9)
    args = ap.parse_args(argv)
    for d in (args.a, args.b):
        if not d.is_dir():
            ap.error(f"{d} is not a reports folder (expected e.g. reports/quick, holding <notebook>/metrics.json)")
    res = diff_metrics(args.a, args.b, args.rtol, args.atol)
    print(f"notebooks compared: {', '.join(res['notebooks']) or 'none'}; {res['compared']} metrics compared")
    print(f"timing/machine metrics excepted ({len(res['timing'])}): " + ", ".join(f"{n}:{k}" for n, k in res["timing"]))
    for side in ("only_a", "only_b"):
        if res[side]:
            print(f"{side}: " + ", ".join(f"{n}:{k}" for n, k in res[side]))
    for n, k, va, vb in res["changed"]:
        print(f"CHANGED {n}:{k}: {va!r} -> {vb!r}")
    print("equal" if not res["changed"] else f"{len(res['changed'])} metric(s) changed")
    return 1 if res["changed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
