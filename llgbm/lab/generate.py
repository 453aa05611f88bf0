"""`python -m llgbm.generate`: a peft adapter for a task (a registered one, or a file of prompts)
from a trained generator, and the same as one call from Python (`generate_for_task`).

    python -m llgbm.generate --task NAME | --prompts FILE --out DIR [--objective sft] [--profile quick]

The profile's generator is reused from its cache or trained first (with a progress bar); the
adapter loads with `PeftModel.from_pretrained(base_model, DIR)`."""
from __future__ import annotations

from pathlib import Path

from llgbm.core.tasks import get_task
from llgbm.core.utils import PROFILES, atomic_write_json
from llgbm.generator.sample import generate_adapter
from llgbm.generator.train import OBJECTIVES
from llgbm.lab.experiment import GeneratorLab


def read_prompts(path: Path | str) -> list[str]:
    """A prompt file: one prompt per line, blank lines ignored; `\\n` inside a line stands for a newline."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.replace("\\n", "\n") for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts: write one prompt per line (blank lines are ignored)")
    return prompts


def generate_for_task(out_dir: Path | str, task: str | None = None, prompts: list[str] | None = None,
                      objective: str = "sft", profile: str = "quick", seed: int = 0, lab=None,
                      progress: bool = True, **train_overrides) -> Path:
    """A peft adapter folder for a task, from the profile's trained generator (trained first, with a
    progress bar, if it is not cached): conditioned on a registered task's train prompts (`task`) or
    on your own `prompts`. Load it with `PeftModel.from_pretrained(base_model, out_dir)`.
    `train_overrides` (e.g. steps) go to the generator's TrainingConfig."""
    if (task is None) == (prompts is None):
        raise ValueError("pass exactly one of task (a registered task's name) or prompts (a list of prompt strings)")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if task is not None:
        prompts = get_task(task).prompts("train")     # KeyError naming the known tasks
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("no prompts to condition the generator on: pass at least one non-empty prompt")
    lab = lab or GeneratorLab.load(profile, with_deltas=objective in ("multitask", "delta", "delta+sft"))
    result = lab.train(objective, seed, progress=progress, **train_overrides)
    lab.check_generator(result.run_dir)
    out, _ = generate_adapter(result.generator, lab.encoder, lab.lora_tokenizer, lab.zoo_cfg.lora_config(), prompts,
                              out_dir)
    atomic_write_json(Path(out) / "llgbm_generation.json",
                      dict(base_model=lab.model_name, generator_run=str(result.run_dir), objective=objective, seed=seed,
                           profile=lab.profile, steps=len(result.history["loss"]), task=task, n_prompts=len(prompts)))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """python -m llgbm.generate --task NAME | --prompts FILE --out DIR [--objective …] [--profile …]"""
    import argparse
    p = argparse.ArgumentParser(prog="python -m llgbm.generate",
                                description="Write a peft LoRA adapter for a task from a trained LLGBM generator.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a registered task's name (its train prompts condition the generator)")
    src.add_argument("--prompts", help="a text file of prompts, one per line")
    p.add_argument("--out", required=True, help="the adapter folder to write")
    p.add_argument("--objective", default="sft", choices=list(OBJECTIVES))
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        prompts = read_prompts(args.prompts) if args.prompts else None
        out = generate_for_task(args.out, task=args.task, prompts=prompts, objective=args.objective,
                                profile=args.profile, seed=args.seed)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
    print(f"wrote {out}: load it with PeftModel.from_pretrained(base_model, {str(out)!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
