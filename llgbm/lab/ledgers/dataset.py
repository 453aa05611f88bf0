"""Notebook 02's metrics and verdict: does each item carry tokens and a delta of the same adapter, is
the weight target non-zero, and do held-out tasks stay out of training."""
from __future__ import annotations

from llgbm.lab.ledgers import Entry


def entry(train, held, layout, leak: set, *, roundtrip: float, delta_diff: float, delta_cos: float, cos_other: float,
          zero_fraction: float, zero_pred_mse: float, delta_dim: int, prompts_per_item: int, load_s: float) -> Entry:
    """`train`, `held`: the two DeltaAugmentedDataset splits; `layout` the LoRA token layout."""
    m = dict(n_train_checkpoints=len(train.rows), n_heldout_checkpoints=len(held.rows), n_train_tasks=len(train.tasks),
             n_heldout_tasks=len(held.tasks), heldout_leak=len(leak), tokens_per_checkpoint=layout.n_tokens,
             token_rows=layout.token_shape[0], token_cols=layout.token_shape[1], delta_dim=delta_dim,
             prompts_per_item=prompts_per_item, token_roundtrip_max_err=roundtrip, delta_from_tokens_max_abs_diff=delta_diff,
             delta_from_tokens_cos=delta_cos, delta_cos_other_task=cos_other, weight_target_zero_fraction=zero_fraction,
             weight_target_zero_pred_mse=zero_pred_mse, first_batch_seconds=load_s)
    verdict = (f"Items are consistent: the delta recomputed from an item's own tokens matches its cached delta "
               f"(cos {delta_cos:.6f}, max |diff| {delta_diff:.1e}); the weight target is {'non-zero' if zero_pred_mse > 0 else 'ZERO'} (all-zero "
               f"prediction MSE {zero_pred_mse:.2f}); {len(held.tasks)} held-out tasks, {len(leak)} of them in the {len(train.tasks)}-task training split.")
    return Entry(m, [], verdict)
