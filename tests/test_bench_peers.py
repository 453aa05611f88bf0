"""llgbm.bench.peers: the peers of issue 30 run the same work as our paths (same batches, same scores)."""
import numpy as np
import pytest

from llgbm.bench import peers
from llgbm.core.tasks import get_task
from llgbm.teachers.run import ZooConfig


def test_trainer_and_zoo_loop_train_the_same_teacher(tiny):
    model, tok = tiny
    cfg = ZooConfig.preset("smoke", steps=4, warmup=2, batch_size=4, lr=1e-2)
    table = peers.teacher_peer(model, tok, get_task("add_1"), cfg, last=4)
    ours, theirs = table.loc["zoo loop"], table.loc["Trainer + peft"]
    assert ours.steps == theirs.steps == 4 and ours.tokens_per_s > 0 and theirs.tokens_per_s > 0
    # the same batches, schedule and optimiser from the same LoRA init: the same losses, up to float noise
    assert ours.final_loss == pytest.approx(theirs.final_loss, rel=1e-3)
    assert table.loc["ratio (zoo / Trainer)", "tokens_per_s"] == pytest.approx(ours.tokens_per_s / theirs.tokens_per_s)
    assert not any("lora" in n for n, _ in model.named_modules())                  # both LoRAs removed from the base


def test_three_ways_of_scoring_k_adapters_give_the_same_scores(tiny, tiny_zoo):
    from peft import LoraConfig
    model, tok = tiny
    root, manifest, _, _ = tiny_zoo
    folders = sorted(p.parent for p in root.rglob("adapter_config.json"))[:3]
    task = get_task("add_1")
    table = peers.scoring_peer(model, tok, task, folders, task.test[:6], LoraConfig.from_pretrained(str(folders[0])))
    assert list(table.index) == ["shared forwards (ours)", "peft mixed batch", "peft one at a time"]
    assert (table.items_per_s > 0).all() and (table.adapters == 3).all()
    assert (table.max_abs_diff < 1e-4).all()
    assert not any("lora" in n for n, _ in model.named_modules())
    assert np.isfinite(table.values.astype(float)).all()
