"""The seed's scripts, on pydoc text:

    python -m geomlib.inl train [--profile quick] [--transformer] [--steps N] [--report FILE]
    python -m geomlib.inl bench [--profile quick] [--checkpoint DIR]   # adaptive vs fixed iterations, measured properly
    python -m geomlib.inl generate --prompt "The with statement" [--checkpoint DIR] [--max-new-tokens 60]
                                   [--temperature 0.8] [--top-p 0.9]

train caches its run under $LLGBM_HOME/inl/ and resumes it. bench and generate load --checkpoint (a
folder train wrote), or else the profile's trained INL model; where there is none yet they say so and
train it first (`--no-train` refuses instead). Every checkpoint is verified as it loads (complete,
finite, fitting its config). An expected error is one line on stderr (exit 2); --debug shows the traceback."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llgbm.core import cli


def parse(argv: list[str]):
    ap = cli.parser("python -m geomlib.inl", __doc__)
    sub = ap.add_subparsers(dest="verb", required=True)
    verbs = {v: cli.add_debug(sub.add_parser(v)) for v in ("train", "bench", "generate")}
    for p in verbs.values():
        p.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    t = verbs["train"]
    t.add_argument("--transformer", action="store_true", help="the size-matched standard transformer instead")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--model-config", default=None, help="an INLConfig as JSON (overrides --transformer)")
    t.add_argument("--lab-config", default=None, help="an INLLabConfig as JSON (overrides --profile)")
    t.add_argument("--no-save", action="store_true", help="train without writing or reading the run cache")
    t.add_argument("--report", default=None, help="write a JSON summary (seconds per step, peak RSS) here")
    for v in ("bench", "generate"):
        verbs[v].add_argument("--checkpoint", default=None, help="a run folder `train` wrote (default: the profile's model)")
        verbs[v].add_argument("--no-train", action="store_true", help="fail instead of training the profile's model when it is missing")
    g = verbs["generate"]
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=60)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("model_config", "lab_config"):
        if getattr(args, name, None):
            cli.input_file(getattr(args, name), f"--{name.replace('_', '-')}")
    if getattr(args, "report", None):
        cli.output_file(args.report, "--report")
    if getattr(args, "checkpoint", None) and not Path(args.checkpoint).exists():
        raise cli.CommandError(f"--checkpoint {args.checkpoint} does not exist: pass a run folder `python -m geomlib.inl train` wrote")
    if args.verb == "generate" and (args.max_new_tokens < 1 or args.temperature <= 0 or not 0 < args.top_p <= 1):
        raise cli.CommandError("generate needs --max-new-tokens ≥ 1, --temperature > 0 and 0 < --top-p ≤ 1")
    if args.verb == "train" and args.steps is not None and args.steps < 1:
        raise cli.CommandError(f"--steps must be ≥ 1, got {args.steps}")
    return args


def read_json(path: str, what: str, cls) -> dict:
    """The config fields of `cls` in a JSON file; an unknown field is named with the known ones."""
    from llgbm.core.utils import check_fields  # lazy: fast --help (defers torch)
    try:
        d = json.loads(Path(path).read_text())
    except ValueError as e:
        raise cli.CommandError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise cli.CommandError(f"{what} {path} must hold a JSON object of {cls.__name__} fields")
    check_fields(cls, d)
    return d


def main(argv: list[str]) -> int:
    args = parse(argv)
    from llgbm.core.timing import rss_mb  # lazy: fast --help (defers torch)
    from llgbm.eval.lm import pydoc_corpus  # lazy: fast --help (defers torch)

    from . import lab  # lazy: fast --help (defers torch)
    from .model import INLConfig  # lazy: fast --help (defers torch)
    from .store import load_trained  # lazy: fast --help (defers torch)
    cfg = (lab.INLLabConfig(**read_json(args.lab_config, "--lab-config", lab.INLLabConfig)) if getattr(args, "lab_config", None)
           else lab.INLLabConfig.preset(args.profile))
    corpus = pydoc_corpus(cfg.tokenizer)
    configs = lab.models_for(cfg, len(corpus["vocab"]))
    if args.verb == "train":
        model_cfg = (INLConfig(**read_json(args.model_config, "--model-config", INLConfig)) if args.model_config
                     else configs["transformer" if args.transformer else "inl"])
        before = rss_mb()              # after imports and the corpus: what the model and training add is above it
        res = lab.train_lm(model_cfg, corpus, cfg, "transformer" if not model_cfg.relax else "inl", stop_after=args.steps,
                           save=not args.no_save)
        peak = rss_mb(peak=True)
        h = res["history"]
        summary = dict(steps=args.steps or cfg.steps, params=res["model"].get_num_params(), relax=model_cfg.relax,
                       val_loss=h[-1]["val_loss"] if h else None, seconds=res["seconds"],
                       seconds_per_step=res["seconds"] / max(1, (args.steps or cfg.steps) - res["resumed_from"]),
                       peak_rss_mb=peak, rss_before_model_mb=before, peak_above_start_mb=peak - before,
                       gradient_checkpointing=model_cfg.gradient_checkpointing, run_dir=str(res["run_dir"]))
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
        return 0
    folder = Path(args.checkpoint) if args.checkpoint else lab.trained_dir(cfg, len(corpus["vocab"]))
    if not args.checkpoint and not (folder / lab.CHECKPOINT).exists() and not (folder / "state.json").exists():
        if args.no_train:
            raise cli.CommandError(f"no trained INL model for --profile {args.profile} (looked in {folder}); "
                                   f"run `python -m geomlib.inl train --profile {args.profile}` or pass --checkpoint")
        print(f"no trained INL model for --profile {args.profile} yet: training it first ({cfg.steps} steps; "
              f"`python -m geomlib.inl train` does this alone, and later calls load it at once)", file=sys.stderr)
        lab.train_lm(configs["inl"], corpus, cfg, "inl")
    model, state = load_trained(folder, vocab_size=len(corpus["vocab"]))
    if state.get("step", cfg.steps) < cfg.steps and not args.checkpoint:
        print(f"note: {folder} holds an interrupted run ({state['step']} of {cfg.steps} steps)", file=sys.stderr)
    if args.verb == "bench":
        import pandas as pd
        table, _, tol = lab.mode_table(model, corpus, cfg)
        print(f"INL {cfg.size} ({model.get_num_params():,} parameters), {cfg.bench_new_tokens} new tokens after a "
              f"{cfg.bench_prompt}-token prompt, greedy, KV cache, median of {cfg.bench_repeats}; calibrated tol {tol:.3g}")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.round(3).to_string())
        return 0
    import torch
    tok, vocab = corpus["tokenizer"], corpus["vocab"]
    ids = tok(args.prompt, add_special_tokens=False).input_ids
    lookup = {int(t): i for i, t in enumerate(vocab.tolist())}
    missing = [t for t in ids if t not in lookup]
    if not ids or missing:
        raise cli.CommandError("the prompt is empty" if not ids else
                               f"the prompt uses {len(missing)} token(s) the pydoc corpus never uses ({tok.decode(missing)!r}); "
                               f"rephrase it in the documentation's words")
    out = model.generate(torch.tensor([[lookup[t] for t in ids]]), args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, generator=torch.Generator().manual_seed(args.seed), progress=True)
    print(tok.decode(vocab[out[0]].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
