"""`python -m llgbm.generate`: a peft adapter for a task (a registered one, or a file of prompts)
from a trained generator, and the same as one call from Python (`generate_for_task`).

    python -m llgbm.generate --prompts FILE --out DIR [--objective cd] [--profile quick]
    python -m llgbm.generate --task NAME --out DIR

By default the generator is the large suite's (notebook 06: trained on up to 234 tasks without LoRA
teachers), with the objective 06 chose on its dev items for this profile (`chosen_objective`; SFT
until 06 has run). The zoo's generators of notebooks 00–05 (weight, delta, kd, ...) are named
with `--objective`. The generator is reused from its cache or trained first; the adapter loads with
`PeftModel.from_pretrained(base_model, DIR)`."""
from __future__ import annotations

import json
from pathlib import Path

from llgbm.core import cli
from llgbm.core.tasks import get_task
from llgbm.core.utils import PROFILES, atomic_write_json, llgbm_home
from llgbm.generator.objectives import ALL_OBJECTIVES, OBJECTIVES

ZOO_OBJECTIVES = tuple(o for o in OBJECTIVES if o != "sft")   # the zoo's (sft there: pass a GeneratorLab)


def choice_path(profile: str) -> Path:
    return llgbm_home() / "suite" / f"chosen-objective-{profile}.json"


def chosen_objective(profile: str) -> tuple[str, str]:
    """(objective, why): the one notebook 06 chose on dev items for `profile`, or SFT before 06 has run."""
    path = choice_path(profile)
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["objective"], f"chosen on dev items by notebook 06 ({saved['when']})"
    return "sft", f"notebook 06 has not run for profile {profile!r}: no choice on dev items yet, SFT meanwhile"


def read_prompts(path: Path | str) -> list[str]:
    """A prompt file: one prompt per line, blank lines ignored; `\\n` inside a line stands for a newline."""
    path = cli.input_file(path, "prompt file")          # missing, or a directory: one clear error
    prompts = [line.replace("\\n", "\n") for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts: write one prompt per line (blank lines are ignored)")
    return prompts


def generate_for_task(out_dir: Path | str, task: str | None = None, prompts: list[str] | None = None,
                      objective: str | None = None, profile: str = "quick", seed: int = 0, lab=None,
                      progress: bool = True, **train_overrides) -> Path:
    """A peft adapter folder for a task, from the profile's trained generator (trained first if it is
    not cached): conditioned on a registered task's train prompts (`task`) or on your own `prompts`.
    Load it with `PeftModel.from_pretrained(base_model, out_dir)`.

    `objective` None: the large suite's generator with the objective 06 chose on dev
    (`chosen_objective`); "sft" or "cd": the suite's generator with it; a zoo objective ("weight",
    "delta", "kd", ...), or any objective with a GeneratorLab as `lab`: the zoo's generator of 00–05,
    with `train_overrides` (e.g. steps) for its TrainingConfig."""
    if (task is None) == (prompts is None):
        raise ValueError("pass exactly one of task (a registered task's name) or prompts (a list of prompt strings)")
    cli.output_dir(out_dir, "the output folder (--out)")
    known = ALL_OBJECTIVES
    if objective is not None and objective not in known:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(known)} (or none: 06's choice on dev)")
    from llgbm.generator.sample import generate_adapter  # lazy: the command parses and checks its input before torch loads
    from llgbm.lab.experiment import GeneratorLab  # lazy: as above
    zoo_lab = isinstance(lab, GeneratorLab) or objective in ZOO_OBJECTIVES
    if objective == "cd" and zoo_lab:
        raise ValueError("objective 'cd' (context distillation) is the large suite's: pass no GeneratorLab")
    if task is not None:
        prompts = get_task(task).prompts("train")     # KeyError naming the known tasks
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("no prompts to condition the generator on: pass at least one non-empty prompt")
    if zoo_lab:
        lab = lab or GeneratorLab.load(profile, with_deltas=objective in ("multitask", "delta", "delta+sft"))
        result = lab.train(objective, seed, progress=progress, **train_overrides)
        lab.check_generator(result.run_dir)
        generator, suite, why = "zoo", None, "named"
    else:
        from llgbm.lab.suitelab import SuiteLab  # lazy: it registers the large suite
        objective, why = (objective, "named") if objective else chosen_objective(profile)
        if progress:
            print(f"generator: the large suite's, objective {objective} ({why})")
        lab = lab or SuiteLab(profile, progress=progress)
        result = lab.train(objective, seed)
        generator, suite = "suite", dict(training_tasks=len(lab.plan.training(lab.largest)))
    out, _ = generate_adapter(result.generator, lab.encoder, lab.lora_tokenizer, lab.zoo_cfg.lora_config(), prompts,
                              out_dir)
    atomic_write_json(Path(out) / "llgbm_generation.json",
                      dict(base_model=lab.model_name, generator=generator, generator_run=str(result.run_dir), objective=objective,
                           objective_source=why, seed=seed, profile=lab.profile, steps=len(result.history["loss"]), task=task,
                           n_prompts=len(prompts), suite=suite))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """python -m llgbm.generate --prompts FILE | --task NAME --out DIR [--objective …] [--profile …]"""
    p = cli.parser("python -m llgbm.generate", "Write a peft LoRA adapter for a task from a trained LLGBM generator.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="a text file of prompts, one per line (a task the suite has never seen)")
    src.add_argument("--task", help="a registered task's name (its train prompts condition the generator)")
    p.add_argument("--out", required=True, help="the adapter folder to write (created if missing)")
    p.add_argument("--objective", default=None, choices=list(ALL_OBJECTIVES),
                   help="default: the large suite's generator with the objective notebook 06 chose on dev items "
                        "(sft or cd); weight, delta, kd, ...: the zoo's generators of notebooks 00-05")
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    prompts = read_prompts(args.prompts) if args.prompts else None
    out = generate_for_task(args.out, task=args.task, prompts=prompts, objective=args.objective, profile=args.profile,
                            seed=args.seed)
    print(f"wrote {out}: load it with PeftModel.from_pretrained(base_model, {str(out)!r})")
    return 0
