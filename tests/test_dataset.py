import numpy as np
import pytest

from llgbm.core import lora
from llgbm.core.tasks import get_task
from llgbm.generator import dataset
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D


def test_heldout_tasks_never_in_training_split(tiny, tiny_zoo):
    root, manifest, deltas, _ = tiny_zoo
    tok = LoRATokenizer2D(LoraLayout.from_config(tiny[0].config))
    train = dataset.DeltaAugmentedDataset(root, manifest, deltas, tok, split="train")
    held = dataset.Text2Qwen25LoRA_DeltaDataset(root, manifest, deltas, tok, split="heldout")
    assert {r["task"] for r in train.rows} == {"add_1", "country_en_to_de"}
    assert {r["task"] for r in held.rows} == {"add_3"}
    assert all(not get_task(train[i]["task"]).heldout for i in range(len(train)))


def test_item_tokens_delta_and_prompts_are_consistent(tiny, tiny_zoo):
    model, hf_tok = tiny
    root, manifest, deltas, cache = tiny_zoo
    tok = LoRATokenizer2D(LoraLayout.from_config(model.config))
    ds = dataset.DeltaAugmentedDataset(root, manifest, deltas, tok, split="all", prompts_per_item=5, repeats=2)
    assert len(ds) == 2 * len(manifest)
    item = ds[3]
    # tokens come from the checkpoint the item names ...
    weights = lora.load_adapter_weights(root / item["path"])
    back = tok.detokenize(item["tokens"])
    assert max((back[k] - v).abs().max().item() for k, v in weights.items()) < 1e-5
    # ... and so does the delta (the cache entry keyed by that checkpoint's content hash)
    np.testing.assert_allclose(item["delta"].numpy(), cache.get(item["adapter_hash"]))
    assert len(item["prompts"]) == 5 and set(item["prompts"]) <= set(get_task(item["task"]).prompts("train"))
    assert ds[3]["prompts"] == item["prompts"] and ds[3 + len(manifest)]["prompts"] != item["prompts"]
    # the weight target is not silently zero (the public attempt's pitfall)
    data = item["tokens"][tok.mask()]
    assert data.abs().mean() > 0.1 and data.std() > 0.1


def test_dataloader_batches(tiny, tiny_zoo):
    root, manifest, deltas, _ = tiny_zoo
    tok = LoRATokenizer2D(LoraLayout.from_config(tiny[0].config))
    ds = dataset.DeltaAugmentedDataset(root, manifest, deltas, tok, split="train", prompts_per_item=4)
    batch = next(iter(dataset.create_dataloader(ds, batch_size=3)))
    assert batch["tokens"].shape == (3, tok.layout.n_tokens, 10, 130)
    assert batch["delta"].shape == (3, tiny[0].config.hidden_size) and batch["task_id"].shape == (3,)
    assert len(batch["prompts"]) == 3 and len(batch["prompts"][0]) == 4


def test_misaligned_inputs_are_refused(tiny, tiny_zoo):
    root, manifest, deltas, _ = tiny_zoo
    tok = LoRATokenizer2D(LoraLayout.from_config(tiny[0].config))
    with pytest.raises(ValueError, match="aligned"):
        dataset.DeltaAugmentedDataset(root, manifest, deltas[:-1], tok)
    with pytest.raises(ValueError, match="unknown split"):
        dataset.DeltaAugmentedDataset(root, manifest, deltas, tok, split="test")
