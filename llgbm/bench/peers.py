"""The lab's hot paths beside the tools a user would reach for instead (issue 30), each pair measured in
one process on the same model, data and threads:

- one teacher: the zoo's training loop (`teachers.run.train_teacher`'s step) against transformers'
  Trainer with peft, same LoRA config, examples in the same order, batch, steps, learning-rate
  schedule (linear warmup, then constant), AdamW settings, no gradient clipping, fp32: tokens/s of
  real tokens, and the final loss of each (mean of its last steps);
- scoring K adapters on the same items (gold log-likelihood per item): our shared forwards
  (FunctionalLoRA hooks, every adapter's rows in one batch) against peft's mixed-batch inference
  (`adapter_names=` per row) and against peft one adapter at a time: items/s, and the largest score
  difference between them (they must agree);
- a generated adapter, prompts to peft folder, end to end and stage by stage, against training one teacher.

`peer_tables` runs all three on a GeneratorLab for `python -m llgbm.bench --peers`."""
from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd
import torch

from llgbm.bench.hotpaths import counted_flops
from llgbm.core.functional import FunctionalLoRA
from llgbm.core.lora import load_adapter_weights, save_adapter, stack_states
from llgbm.core.tasks import get_task
from llgbm.core.timing import median_time
from llgbm.core.utils import warmup_lr
from llgbm.eval.scoring import build_batch, encode_pairs, gold_loglik
from llgbm.generator.sample import generate_adapter, generation_condition
from llgbm.teachers.run import batch_indices, teacher_step


def _order(n: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """The zoo's batches: `batch_indices(n, batch_size, seed, step)` for every step."""
    return [batch_indices(n, batch_size, seed, s).tolist() for s in range(steps)]


def zoo_loop(model, tokenizer, task, cfg, seed: int = 0) -> dict:
    """The zoo's steps (`teachers.run.teacher_step`, its batches) on a fresh peft LoRA of `model` (removed
    afterwards): {seconds, tokens, losses}."""
    from peft import get_peft_model
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg.lora_config())
    try:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        encoded = encode_pairs(tokenizer, task, task.train)
        peft_model.train()
        losses, tokens, seconds = [], 0, 0.0
        for step, idx in enumerate(_order(len(encoded), cfg.batch_size, seed, cfg.steps)):
            t0 = time.perf_counter()
            batch = build_batch([encoded[i] for i in idx], tokenizer.pad_token_id)
            loss = teacher_step(peft_model, opt, batch, cfg, step, f"the bench's teacher of {task.name}")
            seconds += time.perf_counter() - t0
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
    finally:
        peft_model.unload()
        model.eval()
    return dict(seconds=seconds, tokens=tokens, losses=losses)


def trainer_loop(model, tokenizer, task, cfg, seed: int = 0) -> dict:
    """The same run through transformers' Trainer + peft: the zoo's batches laid out in order (a
    sequential sampler), labels −100 outside the answer, the same AdamW and warmup schedule handed to
    the Trainer (HF's `constant_with_warmup` starts one step later), no clipping."""
    from peft import get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    encoded = encode_pairs(tokenizer, task, task.train)
    rows = [encoded[i] for idx in _order(len(encoded), cfg.batch_size, seed, cfg.steps) for i in idx]

    def collate(items):
        batch = build_batch(items, tokenizer.pad_token_id)
        labels = batch["input_ids"].masked_fill(~batch["target_mask"], -100)
        return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg.lora_config())
    try:
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps,
                                     learning_rate=cfg.lr, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1,
                                     save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                                     disable_tqdm=True, dataloader_num_workers=0, seed=seed, remove_unused_columns=False)
            opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
            schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_lr(1.0, step, cfg.warmup))  # the zoo's warmup
            trainer = InOrder(model=peft_model, args=args, train_dataset=rows, data_collator=collate, optimizers=(opt, schedule))
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    finally:
        peft_model.unload()
        model.eval()
    tokens = sum(len(p) + len(t) for p, t in rows)
    return dict(seconds=seconds, tokens=tokens, losses=losses)


def teacher_peer(model, tokenizer, task, cfg, seed: int = 0, last: int = 5) -> pd.DataFrame:
    """One teacher trained by the zoo's loop and by Trainer + peft, one after the other: tokens/s of real
    tokens, seconds, and the mean loss of the `last` steps; the ratio row is ours over theirs."""
    ours, theirs = zoo_loop(model, tokenizer, task, cfg, seed), trainer_loop(model, tokenizer, task, cfg, seed)
    rows = {name: dict(tokens_per_s=r["tokens"] / r["seconds"], seconds=r["seconds"], steps=len(r["losses"]),
                       final_loss=float(np.mean(r["losses"][-last:])))
            for name, r in (("zoo loop", ours), ("Trainer + peft", theirs))}
    table = pd.DataFrame(rows).T
    table.loc["ratio (zoo / Trainer)"] = table.loc["zoo loop"] / table.loc["Trainer + peft"]
    return table


def scoring_peer(model, tokenizer, task, adapters: list, pairs, lora_config) -> pd.DataFrame:
    """Gold log-likelihood of `pairs` under each of `adapters` (peft folders): our shared forwards, peft's
    mixed batch (`adapter_names=`) and peft one adapter at a time. Per way: items/s (items × adapters
    scored per second) and the largest difference from our scores."""
    from peft import PeftModel

    k = len(adapters)
    t0 = time.perf_counter()
    flora = FunctionalLoRA.from_lora_config(model, lora_config, "hooks")
    with flora.hooked(stack_states([load_adapter_weights(a) for a in adapters])):
        ours = gold_loglik(model, tokenizer, task, pairs, copies=k)
    t_ours = time.perf_counter() - t0

    names = [f"a{i}" for i in range(k)]
    peft_model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
    try:
        for name, folder in zip(names[1:], adapters[1:]):
            peft_model.load_adapter(str(folder), adapter_name=name)
        t0 = time.perf_counter()
        mixed = _peft_loglik(peft_model, tokenizer, task, pairs, names)
        t_mixed = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = []
        for name in names:
            peft_model.set_adapter(name)
            single.append(_peft_loglik(peft_model, tokenizer, task, pairs, None)[0])
        t_single = time.perf_counter() - t0
    finally:
        peft_model.unload()
        model.eval()
    n = len(pairs) * k
    return pd.DataFrame({"shared forwards (ours)": dict(items_per_s=n / t_ours, max_abs_diff=0.0),
                         "peft mixed batch": dict(items_per_s=n / t_mixed, max_abs_diff=float(np.abs(mixed - ours).max())),
                         "peft one at a time": dict(items_per_s=n / t_single,
                                                    max_abs_diff=float(np.abs(np.array(single) - ours).max()))}).T.assign(adapters=k)


@torch.no_grad()
def _peft_loglik(peft_model, tokenizer, task, pairs, names: list[str] | None, batch_size: int = 32) -> np.ndarray:
    """(adapters, items) mean gold-token log-prob through peft: each batch's rows repeated once per adapter
    with `adapter_names` (mixed batch), or the active adapter alone (names None: one row per item)."""
    copies = len(names) if names else 1
    out = []
    for i in range(0, len(pairs), batch_size):
        encoded = encode_pairs(tokenizer, task, pairs[i:i + batch_size])
        batch = {k: v.repeat(copies, 1) for k, v in build_batch(encoded, tokenizer.pad_token_id).items()}
        kw = dict(adapter_names=[n for n in names for _ in encoded]) if names else {}
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        mask = batch["target_mask"][:, 1:]
        out.append(((lp * mask).sum(1) / mask.sum(1)).view(copies, -1).numpy())
    return np.concatenate(out, axis=1)


def generation_peer(generator, encoder, lora_tokenizer, lora_config, prompts: list[str], out_dir, teacher_seconds: float,
                    repeats: int = 7) -> pd.DataFrame:
    """Prompts → a peft adapter folder (`sample.generate_adapter`), end to end: the first call in this
    process (cold) and the median of `repeats` warm calls, and each stage on its own (MiniLM encoding of
    the prompts the generator conditions on, the generator's forward, detokenising, writing the folder),
    warm medians; each against `teacher_seconds` (training one teacher) as "× cheaper". GFLOP: each stage's
    FLOPs as FlopCounterMode counts them (end to end: their sum), the floor that no faster code gets under."""
    cold = generate_adapter(generator, encoder, lora_tokenizer, lora_config, prompts, f"{out_dir}/cold")[1]
    warm = float(np.median([generate_adapter(generator, encoder, lora_tokenizer, lora_config, prompts, f"{out_dir}/warm{i}")[1]
                            for i in range(repeats)]))
    cfg = generator.cfg
    encoded = generation_condition(encoder, prompts, cfg.n_prompts, cfg.prompt_tokens)
    with torch.no_grad():
        tokens = generator.eval()(encoded[None])[0]
    state = lora_tokenizer.detokenize(tokens)
    stages = {"encode prompts (MiniLM)": lambda: generation_condition(encoder, prompts, cfg.n_prompts, cfg.prompt_tokens),
              "generator forward": lambda: torch.no_grad()(generator)(encoded[None]),
              "detokenise": lambda: lora_tokenizer.detokenize(tokens),
              "write peft folder": lambda: save_adapter(state, lora_config, f"{out_dir}/stage")}
    rows = {"end to end, first call": cold, f"end to end, warm (median of {repeats})": warm}
    rows |= {name: median_time(fn, repeats) for name, fn in stages.items()}
    gflop = {name: counted_flops(fn) / 1e9 for name, fn in stages.items()}
    gflop |= {k: sum(gflop.values()) for k in list(rows)[:2]}
    table = pd.DataFrame({"seconds": rows, "GFLOP": gflop}).assign(
        times_cheaper_than_teacher=lambda t: teacher_seconds / t.seconds)
    table.loc["one teacher (training)"] = [teacher_seconds, float("nan"), 1.0]
    return table


def peer_tables(lab, items: int = 64, ks=(4, 8, 16), objective: str = "weight", repeats: int = 7) -> dict[str, pd.DataFrame]:
    """{"teacher", "scoring", "generation"} on the lab's model and zoo: a teacher of its first training task
    at the zoo's config; K of its teachers scored on `items` test items of its first held-out task, for
    each K in `ks` (at most the teachers there are); the lab's `objective` generator (trained if not
    cached) writing an adapter for that held-out task, against the teacher run's seconds."""
    train_task, test_task = get_task(lab.training_tasks[0]), get_task(lab.heldout[0])
    teacher = teacher_peer(lab.model, lab.tokenizer, train_task, lab.zoo_cfg)
    folders = [lab.root / r["path"] for r in lab.manifest if (lab.root / r["path"] / "adapter_config.json").is_file()]
    pairs = test_task.test[:items]
    scoring = pd.concat([scoring_peer(lab.model, lab.tokenizer, test_task, folders[:k], pairs, lab.zoo_cfg.lora_config())
                         for k in ks if k <= len(folders)])
    result = lab.train(objective, 0, progress=False)
    with tempfile.TemporaryDirectory() as out:
        generation = generation_peer(result.generator, lab.encoder, lab.lora_tokenizer, lab.zoo_cfg.lora_config(),
                                     test_task.prompts("train"), out, teacher.loc["zoo loop", "seconds"], repeats)
    return dict(teacher=teacher, scoring=scoring, generation=generation)
