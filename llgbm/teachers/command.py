"""`python -m llgbm.zoo`: the command that builds a profile's teacher zoo (`llgbm.teachers.zoo`), its
arguments parsed before torch and the model load."""
from __future__ import annotations

import argparse
from pathlib import Path

from llgbm.core import cli
from llgbm.core.utils import PROFILES


def main(argv: list[str] | None = None) -> int:
    """`python -m llgbm.zoo --profile P`, alone or under `accelerate launch --num_processes N` (GPUs, or
    CPU processes over gloo): build the profile's zoo, the runs split across the processes."""
    p = argparse.ArgumentParser(description="Build a profile's teacher-LoRA zoo, split across the processes of "
                                            "`accelerate launch` when there are several.")
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--model", default=None, help="model preset or folder (default: the profile's)")
    p.add_argument("--root", default=None, help="zoo folder (default: the profile's zoo under LLGBM_HOME)")
    p.add_argument("--no-progress", action="store_true")
    cli.add_debug(p)
    args = p.parse_args(argv)
    import pandas as pd
    import torch
    from accelerate import PartialState

    from llgbm.core import models  # lazy: --help and argument errors answer before torch loads
    from llgbm.teachers.zoo import ZooConfig, build_zoo_across, zoo_dir  # lazy: as above
    state = PartialState(cpu=not torch.cuda.is_available())
    cfg = ZooConfig.preset(args.profile)
    name = args.model or models.MODEL_FOR_PROFILE[args.profile]
    root = Path(args.root) if args.root else zoo_dir(args.profile, name, cfg)
    with state.main_process_first():   # the first load converts the model; the others read the result
        model, tok = models.load_model(name, device=state.device)
    records = build_zoo_across(model, tok, cfg, root, state, progress=not args.no_progress)
    if state.is_main_process:
        ranks = pd.Series([r.get("rank", 0) for r in records]).value_counts().sort_index()
        print(f"zoo: {len(records)} runs in {root} (runs per rank: {dict(ranks)})")
    return 0
