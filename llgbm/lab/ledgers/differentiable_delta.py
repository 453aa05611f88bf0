"""Notebook 03's metrics, claims and verdict: FunctionalLoRA against peft, gradients into every
generator block, and the cost of applying LoRA functionally."""
from __future__ import annotations

import pandas as pd

from llgbm.lab.ledgers import Entry

EQUAL_LOGITS = 1e-3      # fp32 logits within this of peft's count as the same forward
OVERHEAD_TARGET = 1.3    # lab target (issue 5): a hooked forward costs at most this × a merged one


def entry(equality: pd.Series, grads: pd.Series, flow: dict, timings: pd.Series, n_adapters: int) -> Entry:
    """`equality`: max |Δ logits| per comparison; `grads`: per-block gradient norms; `flow` from
    `losses.gradient_flow`; `timings`: median seconds per way of applying LoRA (`functional_costs`)."""
    t = timings
    overhead, call_overhead = t["hooks, forward"] / t["merged weights, forward"], t["functional_call, forward"] / t["merged weights, forward"]
    backward_ratio = t["hooks, forward + backward"] / t["hooks, forward"]
    batch_ratio = t[f"hooks, {n_adapters} adapters in one forward"] / t[f"{n_adapters} merged forwards"]
    m = dict(functional_vs_peft_max_abs_diff=equality["hooks vs peft"], functional_call_vs_peft_max_abs_diff=equality["functional_call vs peft"],
             lora_effect_max_abs_logit=equality["base (no LoRA) vs peft"], grad_norm_min_block=float(grads.min()),
             base_params_with_grad=flow["base_params_with_grad"], delta_loss_before_step=flow["loss_before"],
             delta_loss_after_step=flow["loss_after"], functional_overhead_ratio=overhead, functional_call_overhead_ratio=call_overhead,
             backward_over_forward=backward_ratio, batched_over_merged_4=batch_ratio, n_adapters_batched=n_adapters,
             overhead_target=OVERHEAD_TARGET, equal_logits_tol=EQUAL_LOGITS)
    flows = bool(grads.min() > 0) and flow["loss_after"] < flow["loss_before"] and not flow["base_params_with_grad"]
    claims = [
        ("FunctionalLoRA sends delta-loss gradients into the generator without modifying the base model", "LLGBM (seed 002)",
         "verified" if flows and equality["hooks vs peft"] < EQUAL_LOGITS else "not verified",
         f"logits equal peft to {equality['hooks vs peft']:.1e} (hooks) / {equality['functional_call vs peft']:.1e} (functional_call); "
         f"every generator block gets a gradient (min norm {grads.min():.2e}); one step lowers the loss {flow['loss_before']:.4f} → "
         f"{flow['loss_after']:.4f}; {flow['base_params_with_grad']} base parameters touched"),
        (f"Functional LoRA forward costs ≤ {OVERHEAD_TARGET}× a merged-weight forward", "lab target (issue 5)",
         "met" if overhead <= OVERHEAD_TARGET else "not met",
         f"{overhead:.2f}× (hooks), {call_overhead:.2f}× (functional_call, merge included); backward adds {backward_ratio:.2f}× the forward; "
         f"{n_adapters} adapters in one hooked forward cost {batch_ratio:.2f}× {n_adapters} merged forwards")]
    verdict = (f"Both functional modes reproduce peft's logits (max |diff| {equality['hooks vs peft']:.1e} and "
               f"{equality['functional_call vs peft']:.1e}), every generator block receives a delta-loss gradient, and "
               f"{'no' if not flow['base_params_with_grad'] else flow['base_params_with_grad']} base parameter does. The hooked forward costs {overhead:.2f}× a "
               f"merged-weight forward (target ≤ {OVERHEAD_TARGET}×); forward + backward cost {backward_ratio:.2f}× the forward; batching "
               f"{n_adapters} adapters in one forward costs {batch_ratio:.2f}× {n_adapters} merged forwards.")
    return Entry(m, claims, verdict)
