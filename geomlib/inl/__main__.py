"""The seed's scripts, on pydoc text:

    python -m geomlib.inl train [--profile quick] [--transformer] [--steps N] [--report FILE]
    python -m geomlib.inl bench [--profile quick]      # adaptive vs fixed iterations, measured properly
    python -m geomlib.inl generate --prompt "The with statement" [--max-new-tokens 60] [--temperature 0.8] [--top-p 0.9]

train caches its run under $LLGBM_HOME/inl/ and resumes it; bench and generate use that trained
INL model (training it first if it is missing)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m geomlib.inl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    verbs = {v: sub.add_parser(v) for v in ("train", "bench", "generate")}
    for p in verbs.values():
        p.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    t = verbs["train"]
    t.add_argument("--transformer", action="store_true", help="the size-matched standard transformer instead")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--model-config", default=None, help="an INLConfig as JSON (overrides --transformer)")
    t.add_argument("--lab-config", default=None, help="an INLLabConfig as JSON (overrides --profile)")
    t.add_argument("--no-save", action="store_true", help="train without writing or reading the run cache")
    t.add_argument("--report", default=None, help="write a JSON summary (seconds per step, peak RSS) here")
    g = verbs["generate"]
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=60)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from llgbm.core.timing import rss_mb  # lazy: fast --help (defers torch)
    from llgbm.eval.lm import pydoc_corpus  # lazy: fast --help (defers torch)

    from . import lab  # lazy: fast --help (defers torch)
    from .model import INLConfig  # lazy: fast --help (defers torch)
    cfg = (lab.INLLabConfig(**json.loads(Path(args.lab_config).read_text())) if getattr(args, "lab_config", None)
           else lab.INLLabConfig.preset(args.profile))
    corpus = pydoc_corpus(cfg.tokenizer)
    configs = lab.models_for(cfg, len(corpus["vocab"]))
    if args.verb == "train":
        model_cfg = (INLConfig(**json.loads(Path(args.model_config).read_text())) if args.model_config
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
            Path(args.report).write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
        return 0
    res = lab.train_lm(configs["inl"], corpus, cfg, "inl")
    model = res["model"]
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
    if missing:
        print(f"the prompt uses {len(missing)} token(s) the pydoc corpus never uses ({tok.decode(missing)!r}); "
              f"rephrase it in the documentation's words", file=sys.stderr)
        return 2
    out = model.generate(torch.tensor([[lookup[t] for t in ids]]), args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(vocab[out[0]].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
