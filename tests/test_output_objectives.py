"""The output objectives (kd, sft) of the zoo's generator, the teacher-output cache, the few-shot
and multi-task baselines' building blocks, the labeled condition, and `llgbm.generate` for a user's
own task."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from llgbm.core import tasks
from llgbm.generator import losses, sample, supervision
from llgbm.generator import train as training
from llgbm.generator.dataset import GeneratorData, condition_texts
from llgbm.generator.network import HyperConvGenerator
from llgbm.lab import baselines, generate
from llgbm.lab.experiment import GeneratorLab


@pytest.fixture
def lab(tiny, tiny_zoo):
    model, tok = tiny
    root, _, _, _ = tiny_zoo
    yield GeneratorLab.load("smoke", model=model, tokenizer=tok, zoo_root=root, cache_root=root.parent / "deltas")
    model.requires_grad_(True)     # the supervisions froze the shared tiny model


# ------------------------------------------------------------------ the kd loss

def test_kd_loss_equals_a_hand_computed_kl_on_a_toy_vocabulary():
    torch.manual_seed(0)
    t_logits, s_logits = torch.randn(3, 6), torch.randn(3, 6)
    p, logq = F.softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    # k = vocabulary: the exact KL(teacher ‖ student)
    full = (p * (p.log() - logq)).sum(-1).mean()
    lp, idx = F.log_softmax(t_logits, -1).topk(6, -1)
    assert supervision.kd_loss(logq, lp, idx).item() == pytest.approx(full.item(), rel=1e-5)
    # k = 2: KL between the distributions coarsened to {top-1, top-2, the rest}, written out by hand
    lp2, idx2 = F.log_softmax(t_logits, -1).topk(2, -1)
    q = logq.exp()
    by_hand = []
    for i in range(3):
        a, b = idx2[i].tolist()
        pr, qr = 1 - p[i, a] - p[i, b], 1 - q[i, a] - q[i, b]
        by_hand.append(p[i, a] * torch.log(p[i, a] / q[i, a]) + p[i, b] * torch.log(p[i, b] / q[i, b]) + pr * torch.log(pr / qr))
    assert supervision.kd_loss(logq, lp2, idx2).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-4)
    assert supervision.kd_loss(logq, lp2, idx2).item() <= full.item() + 1e-6      # coarsening never raises a KL
    assert supervision.kd_loss(F.log_softmax(t_logits, -1), lp, idx).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ the teacher-output cache

def test_teacher_output_cache_is_content_keyed_and_crash_safe(tmp_path):
    cache = supervision.TeacherOutputCache("model-a", top_k=2, root=tmp_path)
    entry = dict(logp=torch.log(torch.tensor([[0.5, 0.25]])), index=torch.tensor([[3, 1]], dtype=torch.int32),
                 offsets=torch.tensor([0, 1]))
    calls = []

    def compute():
        calls.append(1)
        return entry
    cache.get_or_compute("hash1", "ex1", compute)
    again = cache.get_or_compute("hash1", "ex1", compute)
    assert len(calls) == 1 and cache.hits == 1 and torch.equal(again["index"], entry["index"])
    assert TeacherOutputCacheMass(again) == pytest.approx(0.75)
    # another teacher, another example pool, another k or another base model: new entries
    paths = {cache.path("hash1", "ex1"), cache.path("hash2", "ex1"), cache.path("hash1", "ex2"),
             supervision.TeacherOutputCache("model-a", 3, tmp_path).path("hash1", "ex1"),
             supervision.TeacherOutputCache("model-b", 2, tmp_path).path("hash1", "ex1")}
    assert len(paths) == 5
    # a computation that dies leaves nothing behind (and the earlier entry intact)

    def dies():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute("hash2", "ex1", dies)
    assert not cache.path("hash2", "ex1").exists() and not list(tmp_path.glob(".*tmp*"))
    # a truncated file is recomputed, never served
    path = cache.path("hash1", "ex1")
    path.write_bytes(path.read_bytes()[:40])
    cache.get_or_compute("hash1", "ex1", compute)
    assert len(calls) == 2 and torch.equal(load_file(str(path))["index"], entry["index"])


def TeacherOutputCacheMass(entry):
    return supervision.TeacherOutputCache.mass(entry)


def test_teacher_outputs_match_the_teacher_model(lab):
    row = lab.data.rows[0]
    sup = lab.outputs
    entry = sup.teacher(row)
    encoded = sup.pool.encoded[row["task"]]
    assert len(entry["offsets"]) == len(encoded) + 1 and int(entry["offsets"][-1]) == len(entry["logp"])
    from llgbm.core.lora import lora_applied
    with torch.no_grad(), lora_applied(lab.model, lab.root / row["path"]) as m:
        lp = supervision.answer_logprobs(m, sup.pool.batch([(row["task"], np.arange(len(encoded)))]))
    v, i = lp.topk(sup.cache.top_k, -1)
    assert torch.allclose(entry["logp"], v, atol=1e-5) and torch.equal(entry["index"].long(), i)


# ------------------------------------------------------------------ objectives

def test_phase6_objectives_and_old_run_keys():
    cfg = training.TrainingConfig.preset("quick", "delta+sft")
    assert cfg.lambdas == (0.0, 1.0, 0.0, 1.0) and cfg.objective == "delta+sft" and cfg.effective_lr == cfg.delta_lr
    for name in ("kd", "sft", "weight+sft"):
        c = training.TrainingConfig.preset("quick", name)
        assert c.objective == name and c.uses_outputs and c.effective_lr == c.delta_lr
    # runs from before phase 6 keep their keys: no λ_kd / λ_sft in them unless set
    key = training.TrainingConfig.preset("quick", "delta").run_key()
    assert key == dict(batch_size=4, warmup=10, weight_decay=1e-4, clip_norm=1.0, lambda_w=0.0, lambda_d=1.0, lr=1e-4)
    assert training.TrainingConfig.preset("quick", "sft").run_key()["lambda_sft"] == 1.0
    with pytest.raises(ValueError, match="not all 0"):
        losses.MultiTaskLoss(0.0, 0.0, lambda_kd=0.0, lambda_sft=0.0)
    with pytest.raises(ValueError, match="needs the sft loss"):
        losses.MultiTaskLoss(0.0, 0.0, lambda_sft=1.0)(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    assert training.TrainingConfig.preset("quick").eval_items * 8 >= 512


def test_sft_gradients_reach_the_generator_and_the_base_stays_frozen(lab):
    torch.manual_seed(0)
    data = lab.data
    gen = HyperConvGenerator(lab.gcfg, data.tokens.shape[1], data.tokens.shape[2:])
    gen.set_offset(data.tokens.mean(0))
    base_before = {k: v.clone() for k, v in lab.model.state_dict().items()}
    rng = np.random.default_rng(0)
    rows, cond, _, _ = data.draw(rng, 2)
    out = lab.outputs(gen(cond), [data.rows[i] for i in rows], rng)
    assert set(out) == {"kd", "sft"} and all(torch.isfinite(v) for v in out.values())
    out["sft"].backward()
    norms = [p.grad.norm().item() for p in gen.parameters() if p.grad is not None]
    assert norms and max(norms) > 0
    assert all(p.grad is None for p in lab.model.parameters())
    assert all(torch.equal(v, base_before[k]) for k, v in lab.model.state_dict().items())


def test_sft_and_kd_runs_train_and_resume_with_their_histories(lab):
    res = lab.train("sft", 0, progress=False, steps=2, keep_steps=(1, 2))
    assert len(res.history["sft"]) == 2 and np.isnan(res.history["kd"]).all() and np.isfinite(res.history["sft"]).all()
    assert sorted(int(p.stem.split("_")[1]) for p in res.run_dir.glob("step_*.safetensors")) == [1, 2]
    again = lab.train("sft", 0, progress=False, steps=1, keep_steps=(1, 2))     # a kept step is loaded, not retrained
    assert again.resumed_from == 1 and len(again.history["loss"]) == 1
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["objective"] == "sft" and cfg["outputs"] == lab.outputs.key() and cfg["base_model"] == lab.model_name
    kd = lab.train("kd", 0, progress=False, steps=1)
    assert kd.run_dir != res.run_dir and np.isfinite(kd.history["kd"]).all()
    with pytest.raises(ValueError, match="OutputSupervision"):
        training.train(lab.data, lab.gcfg, lab.config("sft", steps=1), 0, lab.supervision)


# ------------------------------------------------------------------ baselines and conditions

def test_multitask_lora_sees_only_training_tasks(lab):
    mix = baselines.TaskMixture("m", tuple(lab.training_tasks))
    seen = {t for (t, _), _ in mix.train}
    assert seen == set(lab.training_tasks) and not any(tasks.get_task(t).heldout for t in seen)
    assert len(mix.train) == sum(len(tasks.get_task(t).train) for t in lab.training_tasks)
    t, x = mix.train[0][0]
    assert mix.prompt((t, x)) == tasks.get_task(t).prompt(x)
    assert len(mix.test) == sum(len(tasks.get_task(t).test[:mix.test_per_task]) for t in lab.training_tasks)


def test_in_context_prompt_contains_no_test_item():
    for name in tasks.BUILTIN_TASKS:
        task = tasks.get_task(name)
        prefix = baselines.icl_prefix(task, 4)
        demos = baselines.demonstrations(task, 4)
        assert len(demos) == 4 and set(demos) <= set(task.train)
        assert not any(task.prompt(x) + task.target(y) in prefix for x, y in task.test)
        assert prefix.count("Output:") == 4 and baselines.demonstrations(task, 4) == demos     # fixed per task
    leaky = tasks.Task("leaky", "custom", "Echo.", (("a", "a"), ("b", "b")), (("a", "a"),))
    with pytest.raises(ValueError, match="test items"):
        baselines.icl_prefix(leaky, 2)


def test_labeled_condition_carries_the_answers_and_tiles_the_shots(lab):
    task = tasks.get_task(lab.training_tasks[0])
    texts = condition_texts(task, labeled=True)
    assert texts[0] == task.prompt(task.train[0][0]) + task.target(task.train[0][1])
    data = lab.data_for(labeled=True, shots=2)
    assert data is lab.data_for(labeled=True, shots=2) and data.fingerprint() != lab.data.fingerprint()
    cond = data.condition(task.name, np.random.default_rng(0))
    assert cond.shape[0] == lab.gcfg.n_prompts and torch.equal(cond[0], cond[2]) and not torch.equal(cond[0], cond[1])
    with pytest.raises(ValueError, match="shots"):
        GeneratorData(lab.dataset, lab.encoder, lab.gcfg, labeled=True, shots=lab.gcfg.n_prompts + 1)


# ------------------------------------------------------------------ a user's own task

def test_generate_writes_a_peft_folder_with_the_in_memory_logits(lab, tmp_path):
    from peft import PeftModel
    out = generate.generate_for_task(tmp_path / "adapter", task="add_3", objective="weight", lab=lab, progress=False)
    meta = json.loads((out / "llgbm_generation.json").read_text())
    assert meta["base_model"] == lab.model_name and meta["task"] == "add_3"
    res = lab.train("weight", 0, progress=False)
    state = lab.lora_tokenizer.detokenize(sample.generate_tokens(res.generator, lab.encoder, tasks.get_task("add_3").prompts()))
    ids = lab.tokenizer(["Add 3 to the number.\nInput: 12\nOutput:"], return_tensors="pt").input_ids
    from llgbm.core.lora import lora_applied
    with torch.no_grad(), lora_applied(lab.model, state, lab.zoo_cfg.lora_config()) as m:
        expected = m(ids).logits
    peft_model = PeftModel.from_pretrained(lab.model, str(out))
    try:
        with torch.no_grad():
            got = peft_model(ids).logits
    finally:
        peft_model.unload()
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, lab.model(ids).logits, atol=1e-6)


def test_generate_refuses_bad_input(lab, tmp_path, capsys):
    from llgbm.core import cli
    from llgbm.generate import main
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    for argv, expected in [(["--task", "no_such_task"], "unknown task 'no_such_task'"), (["--prompts", str(empty)], "has no prompts"),
                           (["--prompts", str(tmp_path / "missing.txt")], "does not exist")]:
        assert cli.run(main, [*argv, "--out", str(tmp_path / "a"), "--profile", "smoke"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="exactly one of"):
        generate.generate_for_task(tmp_path / "a", lab=lab)
    with pytest.raises(ValueError, match="unknown objective"):
        generate.generate_for_task(tmp_path / "a", task="add_3", objective="magic", lab=lab)
    # a generator trained for another base model is refused
    res = lab.train("weight", 0, progress=False)
    cfg_path = res.run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, base_model="smollm2", model_fingerprint="another-model")))
    with pytest.raises(ValueError, match="another base model"):
        generate.generate_for_task(tmp_path / "b", prompts=["Add 3 to the number.\nInput: 5\nOutput:"], objective="weight",
                                   lab=lab)
    assert not (tmp_path / "b").exists()


def test_read_prompts_keeps_lines_and_escaped_newlines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Add 3.\\nInput: 4\\nOutput:\n\nsecond\n")
    assert generate.read_prompts(f) == ["Add 3.\nInput: 4\nOutput:", "second"]
