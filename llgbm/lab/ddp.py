"""Generator training under `accelerate launch` (DDP), e.g. on 2 CPU processes:

    accelerate launch --multi_gpu --num_processes 2 -m llgbm.ddp --profile smoke --objective multitask --out runs/ddp

(without a GPU, `--multi_gpu` gives accelerate's multi-CPU mode over gloo). Each process draws its own
batches; DDP averages the gradients, so every rank ends with the same generator. Each rank writes its
final weights to OUT/rank<i>.safetensors and the batches it drew to OUT/batches.txt (one line a rank),
so the result can be checked; rank 0 also writes the initial weights and the run's checkpoints.

A missing or partial teacher zoo is built first, its (task, seed) runs split across the ranks as
`python -m llgbm.zoo` splits them; rank 0 then computes the teacher deltas once for all."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from llgbm.core import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--model", default=None, help="model preset or folder (default: the profile's)")
    p.add_argument("--zoo", default=None, help="zoo folder (default: the profile's zoo under LLGBM_HOME)")
    p.add_argument("--deltas", default=None, help="DeltaCache folder (default: LLGBM_DELTAS or the repo's deltas/)")
    p.add_argument("--objective", default="multitask", choices=["weight", "multitask", "delta"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    cli.add_debug(p)
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from llgbm.core import models  # lazy: fast --help (defers torch)
    from llgbm.generator import train  # lazy: fast --help (defers torch)
    from llgbm.generator.network import HyperConvGenerator  # lazy: fast --help (defers torch)
    from llgbm.lab.experiment import GeneratorLab  # lazy: fast --help (defers torch)
    from llgbm.teachers import zoo  # lazy: fast --help (defers torch)

    acc = Accelerator(cpu=not torch.cuda.is_available())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.model or models.MODEL_FOR_PROFILE[args.profile]
    zcfg = zoo.ZooConfig.preset(args.profile)
    root = Path(args.zoo) if args.zoo else zoo.zoo_dir(args.profile, name, zcfg)
    with acc.main_process_first():             # the first load converts the model; the others read it
        model, tok = models.load_model(name, device=acc.device)
    missing = zoo.missing_runs(zcfg, root)
    if missing:
        acc.print(f"[llgbm.ddp] the zoo at {root} lacks {len(missing)} of {len(zoo.zoo_runs(zcfg))} runs: "
                  f"building them across {acc.num_processes} process(es) first")
        zoo.build_zoo_across(model, tok, zcfg, root, acc, progress=acc.is_main_process)
    with acc.main_process_first():             # rank 0 computes and caches the deltas, the others read them
        lab = GeneratorLab.load(args.profile, name, model=model, tokenizer=tok, zoo_root=root, cache_root=args.deltas)
    data, gcfg = lab.data, lab.gcfg
    cfg = lab.config(args.objective, **({"steps": args.steps} if args.steps else {}))
    sup = lab.supervision

    drawn = []
    draw = data.draw

    def recording_draw(rng, batch_size):       # remember which checkpoints this rank trained on
        out = draw(rng, batch_size)
        drawn.append(out[0].tolist())
        return out
    data.draw = recording_draw

    if acc.is_main_process:                    # the weights train() starts from, for the record
        torch.manual_seed(args.seed)
        init = HyperConvGenerator(gcfg, data.tokens.shape[1], data.tokens.shape[2:])
        init.set_offset(data.tokens.mean(0))
        save_file({k: v.contiguous() for k, v in init.state_dict().items()}, str(out / "init.safetensors"))
    res = train.train(data, gcfg, cfg, args.seed, sup, run_dir=out / "run", accelerator=acc, progress=False)
    save_file({k: v.contiguous() for k, v in res.generator.state_dict().items()}, str(out / f"rank{acc.process_index}.safetensors"))
    gathered = [None] * acc.num_processes
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(gathered, drawn)
    else:
        gathered = [drawn]
    if acc.is_main_process:
        (out / "batches.txt").write_text("".join(json.dumps(d) + "\n" for d in gathered))
    acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
