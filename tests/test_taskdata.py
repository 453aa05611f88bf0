"""Teacherless generator training (issue 27): task rows (TaskData) and context distillation, whose
kd teacher is the base model with demonstrations in its prompt, so any task of the suite can train."""
import numpy as np
import pytest
import torch

from llgbm.core import models, tasks
from llgbm.eval.scoring import build_batch, encode_pairs
from llgbm.generator import supervision
from llgbm.generator import train as training
from llgbm.generator.dataset import TaskData
from llgbm.lab.experiment import GeneratorLab

NO_TEACHER = ["subtract_1", "caesar_1"]          # training tasks the tiny zoo has no LoRA for


@pytest.fixture
def lab(tiny, tiny_zoo):
    model, tok = tiny
    root, _, _, _ = tiny_zoo
    yield GeneratorLab.load("smoke", model=model, tokenizer=tok, zoo_root=root, cache_root=root.parent / "deltas")
    model.requires_grad_(True)


def _outputs(lab, names, shots=2):
    return supervision.OutputSupervision(lab.model, lab.tokenizer, names, lab.root, lab.zoo_cfg.lora_config(),
                                         lab.lora_tokenizer, models.model_fingerprint(lab.model_name), examples=4,
                                         per_adapter=2, top_k=8, context_shots=shots)


def test_context_demos_never_show_the_example_itself():
    t = tasks.get_task("add_1")
    for i in range(10):
        demos = supervision.context_demos(t, i, 4)
        assert len(set(demos)) == 4 and t.train[i] not in demos and set(demos) <= set(t.train)
        assert demos == supervision.context_demos(t, i, 4)
    with pytest.raises(ValueError, match="shots ≥ 1"):
        supervision.context_demos(t, 0, 0)


def test_context_teacher_is_the_base_model_reading_the_demonstrations(tiny):
    model, tok = tiny
    pool = supervision.ExamplePool(tok, NO_TEACHER, 4)
    entry = supervision.context_topk(model, pool, "subtract_1", shots=2, top_k=8)
    encoded = pool.encoded["subtract_1"]
    assert len(entry["offsets"]) == len(encoded) + 1 and int(entry["offsets"][-1]) == sum(len(a) for _, a in encoded)
    t = tasks.get_task("subtract_1")
    x, y = t.train[1]
    prefix = "".join(t.prompt(a) + t.target(b) for a, b in supervision.context_demos(t, 1, 2))
    with torch.no_grad():
        lp = supervision.answer_logprobs(model, build_batch(encode_pairs(tok, t, [(x, y)], prefix=prefix), tok.pad_token_id))
        bare = supervision.answer_logprobs(model, build_batch(encode_pairs(tok, t, [(x, y)]), tok.pad_token_id))
    a, b = int(entry["offsets"][1]), int(entry["offsets"][2])
    assert torch.allclose(entry["logp"][a:b], lp.topk(8, -1).values, atol=1e-5)
    # without the demonstrations the base model predicts otherwise: the context is what teaches
    assert not torch.allclose(bare.topk(8, -1).values, entry["logp"][a:b], atol=1e-3)


def test_task_rows_train_sft_and_context_distillation_and_refuse_bad_input(lab):
    offset = lab.data.tokens.mean(0)
    sft = TaskData(NO_TEACHER, lab.encoder, lab.gcfg, lab.lora_tokenizer, offset)
    cd = TaskData(NO_TEACHER, lab.encoder, lab.gcfg, lab.lora_tokenizer, offset, teacher="context")
    assert [r["task"] for r in sft.rows] == sorted(NO_TEACHER) and sft.fingerprint() != cd.fingerprint()
    out = _outputs(lab, NO_TEACHER)
    runs = {}
    for name, data in (("sft", sft), ("kd", cd)):
        cfg = lab.config(name, steps=2, keep_steps=())
        runs[name] = training.train(data, lab.gcfg, cfg, 0, progress=False, outputs=out, run_dir=lab.root.parent / name)
        assert np.isfinite(runs[name].history[name]).all() and len(runs[name].history["loss"]) == 2
    # the generated adapter with a few-shot prompt before each item: scored as the adapter applied to
    # that prompt, and cached apart from the adapter alone
    from llgbm.generator import sample
    from llgbm.eval.scoring import evaluate_adapter
    from llgbm.lab.baselines import icl_prefix
    res, held = runs["sft"], lab.heldout[:1]
    both = sample.evaluate_many([res], lab.encoder, lab.model, lab.tokenizer, lab.lora_tokenizer, lab.zoo_cfg.lora_config(),
                                held, 2, progress=False, loglik_only=True, prefix=lambda t: icl_prefix(t, 2))[0]
    alone = sample.evaluate_many([res], lab.encoder, lab.model, lab.tokenizer, lab.lora_tokenizer, lab.zoo_cfg.lora_config(),
                                 held, 2, progress=False, loglik_only=True)[0]
    task = tasks.get_task(held[0])
    state = lab.lora_tokenizer.detokenize(sample.generate_tokens(res.generator, lab.encoder, task.prompts("train")))
    direct = evaluate_adapter(lab.model, lab.tokenizer, task, state, 2, lora_config=lab.zoo_cfg.lora_config(),
                              prefix=icl_prefix(task, 2), loglik_only=True)
    assert np.allclose(both[held[0]]["loglik"], direct.loglik, atol=1e-4)
    assert not np.allclose(both[held[0]]["loglik"], alone[held[0]]["loglik"], atol=1e-4)
    assert len(list(res.run_dir.glob("eval_*.json"))) == 2
    assert out.cache.misses == len(NO_TEACHER)                            # one context teacher per task, then served
    out.teacher(cd.rows[0])
    assert out.cache.misses == len(NO_TEACHER)
    with pytest.raises(ValueError, match="task rows"):
        training.train(sft, lab.gcfg, lab.config("weight", steps=1), 0, progress=False)
    with pytest.raises(ValueError, match="task rows"):
        training.train(sft, lab.gcfg, lab.config("kd", steps=1), 0, progress=False, outputs=out)
    with pytest.raises(ValueError, match="held-out"):
        TaskData(["add_3"], lab.encoder, lab.gcfg, lab.lora_tokenizer, offset)
    with pytest.raises(ValueError, match="unknown teacher"):
        TaskData(NO_TEACHER, lab.encoder, lab.gcfg, lab.lora_tokenizer, offset, teacher="lora")
    with pytest.raises(ValueError, match="offset must be one token tensor"):
        TaskData(NO_TEACHER, lab.encoder, lab.gcfg, lab.lora_tokenizer, offset[None])


def test_a_generator_without_a_zoo_starts_from_a_fresh_lora(tiny):
    from llgbm.generator.dataset import lora_init_tokens
    from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D
    from llgbm.teachers.zoo import ZooConfig
    model, _ = tiny
    zcfg = ZooConfig.preset("smoke")
    lt = LoRATokenizer2D(LoraLayout.from_config(model.config, rank=zcfg.rank, targets=zcfg.targets))
    state = lt.detokenize(lora_init_tokens(model, zcfg.lora_config(), lt))
    a = [v for k, v in state.items() if "lora_A" in k]
    b = [v for k, v in state.items() if "lora_B" in k]
    assert a and all(v.abs().sum() > 0 for v in a) and all(v.abs().sum() == 0 for v in b)
    assert not any("lora" in n for n, _ in model.named_modules())                   # the base model is left clean
