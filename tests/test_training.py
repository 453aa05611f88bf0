import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llgbm.core import models, tasks
from llgbm.delta.probes import create_generic_probes
from llgbm.generator import losses, network, sample, train
from llgbm.generator.dataset import DeltaAugmentedDataset, GeneratorData
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D
from llgbm.teachers.zoo import ZooConfig

GCFG = network.GeneratorConfig.preset("smoke")


@pytest.fixture
def setup(tiny, tiny_zoo):
    model, tok = tiny
    root, manifest, deltas, _ = tiny_zoo
    lora_tok = LoRATokenizer2D(LoraLayout.from_config(model.config, rank=ZooConfig.preset("smoke").rank))
    data = GeneratorData(DeltaAugmentedDataset(root, manifest, deltas, lora_tok), models.load_encoder(), GCFG)
    sup = losses.DeltaSupervision(model, tok, create_generic_probes(), ZooConfig.preset("smoke").lora_config(), lora_tok)
    yield data, sup
    model.requires_grad_(True)     # DeltaSupervision froze the shared tiny model


def test_objectives_and_presets():
    cfg = train.TrainingConfig.preset("quick", "multitask")
    assert (cfg.lambda_w, cfg.lambda_d, cfg.objective) == (1.0, 1.0, "multitask")
    assert train.TrainingConfig.preset("smoke", "delta").objective == "delta"
    assert len(train.TrainingConfig.preset("quick").seeds) >= 3
    with pytest.raises(ValueError, match="unknown objective"):
        train.TrainingConfig.preset("quick", "behaviour")
    with pytest.raises(ValueError, match="not all 0"):
        losses.MultiTaskLoss(0.0, 0.0)
    loss = losses.DeltaOnlyLoss()
    assert (loss.lambda_w, loss.lambda_d) == (0.0, 1.0)
    t = torch.randn(3, 8)
    assert losses.delta_loss(torch.zeros(3, 8), t).item() == pytest.approx(1.0)
    assert losses.delta_loss(t, t).item() == 0.0


def test_delta_step_changes_generator_and_lowers_loss(setup):
    data, sup = setup
    torch.manual_seed(0)
    gen = network.HyperConvGenerator(GCFG, data.tokens.shape[1], data.tokens.shape[2:]).eval()
    gen.set_offset(data.tokens.mean(0))
    cond, _, target_delta = data.batch(np.random.default_rng(0), 2)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    seen = []
    for _ in range(3):
        loss = losses.delta_loss(sup(gen(cond)), target_delta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(loss.item())
    after = losses.delta_loss(sup(gen(cond)), target_delta).item()
    assert after < seen[0]
    changed = [k for k, v in gen.state_dict().items() if k != "offset" and not torch.equal(v, before[k])]
    assert len(changed) == len([k for k in before if k != "offset"])
    assert all(p.grad is None for p in sup.flora.model.parameters())   # the base model stays frozen


def test_resume_reproduces_the_same_steps(setup, tmp_path):
    data, sup = setup
    cfg = train.TrainingConfig.preset("smoke", "multitask", steps=3, ckpt_every=2)
    straight = train.train(data, GCFG, cfg, 0, sup, run_dir=tmp_path / "a", progress=False)
    train.train(data, GCFG, cfg, 0, sup, run_dir=tmp_path / "b", progress=False)
    (tmp_path / "b" / "step_000003.safetensors").unlink()  # as if interrupted after the step-2 checkpoint
    resumed = train.train(data, GCFG, cfg, 0, sup, run_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 2
    for k, v in straight.generator.state_dict().items():
        assert torch.equal(v, resumed.generator.state_dict()[k]), k
    assert resumed.history["loss"] == straight.history["loss"]
    again = train.train(data, GCFG, cfg, 0, sup, run_dir=tmp_path / "a", progress=False)   # finished: loaded
    assert again.resumed_from == 3 and not again.history["seconds"][3:]
    longer = train.train(data, GCFG, train.TrainingConfig.preset("smoke", "multitask", steps=5, ckpt_every=2), 0, sup,
                            run_dir=tmp_path / "a", progress=False)
    assert longer.resumed_from == 3 and len(longer.history["loss"]) == 5


def test_a_later_notebook_continuing_a_run_files_only_its_own_steps(setup, lab_home, tmp_path):
    """04b trains a delta-only run, 05 trains it longer from 04b's checkpoint (keeping 04b's last
    step), and a rerun of 04b reads it back: each files the steps it took, and the REPORT's table
    calls it continued, not work done twice (issue 30)."""
    from llgbm.core import artefacts
    from llgbm.notebook import usage
    data, sup = setup
    short = train.TrainingConfig.preset("smoke", "weight", steps=2, ckpt_every=1)
    long = train.TrainingConfig.preset("smoke", "weight", steps=4, ckpt_every=1, keep_steps=(2,))
    rows = {}
    for stem, cfg in (("04b_ablations", short), ("05_delta_only", long), ("rerun", short)):
        artefacts.start(tmp_path / stem / "artefacts.json")
        try:
            res = train.train(data, GCFG, cfg, 0, sup, progress=False)
        finally:
            artefacts.stop()
        rows[stem] = artefacts.read(tmp_path / stem / "artefacts.json")[artefacts.key_of(res.run_dir)]
    assert rows["04b_ablations"]["steps"] == [0, 2] and rows["05_delta_only"]["steps"] == [2, 4]
    assert rows["rerun"] == dict(kind="generator run", trained=False)          # step 2 kept: read back
    text = "\n".join(usage.artefact_table(tmp_path, ["04b_ablations", "05_delta_only"]))
    assert "| generator run | 1 | 04b, 05 | 04b, 05 (continued" in text
    assert "1 trained further by a later notebook" in text and "0 trained over the same steps" in text
    assert "a defect" not in text


def test_checkpoints_are_safetensors_and_old_pickles_are_never_loaded(setup, tmp_path):
    data, sup = setup
    cfg = train.TrainingConfig.preset("smoke", "weight", steps=2, ckpt_every=1)
    run = tmp_path / "generators" / "weight-seed0-oldformat"
    run.mkdir(parents=True)
    (run / "step_000002.pt").write_bytes(b"\x80\x04 not a pickle anyone should load")
    assert train.legacy_run_dirs(tmp_path / "generators") == [run]
    res = train.train(data, GCFG, cfg, 0, sup, run_dir=run, progress=False)
    assert res.resumed_from == 0 and len(res.history["loss"]) == 2          # retrained, the .pt ignored
    assert sorted(p.name for p in run.glob("step_*.safetensors")) == ["step_000001.safetensors", "step_000002.safetensors"]
    assert train.legacy_run_dirs(tmp_path / "generators") == []           # now a current-format run
    from safetensors import safe_open

    from llgbm.core import checkpoint
    assert checkpoint.read_state(run / "step_000002.safetensors")["step"] == 2
    with safe_open(str(run / "step_000002.safetensors"), "pt") as f:
        assert any(k.startswith("adam/") for k in f.keys())


def test_evaluate_caches_item_scores_in_the_run_folder(setup, tiny, monkeypatch, tmp_path):
    data, sup = setup
    model, tok = tiny
    cfg = train.TrainingConfig.preset("smoke", "weight", steps=2)
    res = train.train(data, GCFG, cfg, 0, sup, run_dir=tmp_path / "run", progress=False)
    enc, lcfg = models.load_encoder(), ZooConfig.preset("smoke").lora_config()
    first = sample.evaluate(res, enc, model, tok, data.lora_tokenizer, lcfg, ["add_3"], 3, progress=False)
    assert set(first["add_3"]) == {"correct", "loglik"} and len(first["add_3"]["loglik"]) == 3
    assert len(list((tmp_path / "run").glob("eval_*.json"))) == 1
    calls, real = [], sample.evaluate_adapters
    monkeypatch.setattr(sample, "evaluate_adapters", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    again = sample.evaluate(res, enc, model, tok, data.lora_tokenizer, lcfg, ["add_3"], 3, progress=False)
    assert calls == [] and np.array_equal(again["add_3"]["loglik"], first["add_3"]["loglik"])   # served from the cache
    other = sample.evaluate(res, enc, model, tok, data.lora_tokenizer, lcfg, ["add_3"], 2, progress=False)
    assert calls == [1] and np.allclose(other["add_3"]["loglik"], first["add_3"]["loglik"][:2], atol=1e-5)

    # Several runs at once: the cached one is read, the two new ones share forwards, each gets its own cache,
    # and every run scores as it does alone.
    more = [train.train(data, GCFG, train.TrainingConfig.preset("smoke", "weight", steps=s), 1, sup,
                           run_dir=tmp_path / f"run{s}", progress=False) for s in (1, 3)]
    calls.clear()
    together = sample.evaluate_many([res, *more], enc, model, tok, data.lora_tokenizer, lcfg, ["add_3"], 3, progress=False)
    assert calls == [2] and np.array_equal(together[0]["add_3"]["loglik"], first["add_3"]["loglik"])
    for r, t in zip(more, together[1:]):
        assert len(list(r.run_dir.glob("eval_*.json"))) == 1
        alone = sample.evaluate(r, enc, model, tok, data.lora_tokenizer, lcfg, ["add_3"], 3, progress=False)   # cached
        assert np.array_equal(alone["add_3"]["loglik"], t["add_3"]["loglik"])
    assert calls == [2]
    task = tasks.get_task("add_3")
    states = [data.lora_tokenizer.detokenize(sample.generate_tokens(r.generator, enc, task.prompts("train"))) for r in more]
    fresh = [real(model, tok, task, [state], n=3, lora_config=lcfg)[0] for state in states]
    for f, t in zip(fresh, together[1:]):
        np.testing.assert_allclose(f.loglik, t["add_3"]["loglik"], atol=1e-4)        # shared = alone
    assert not np.allclose(together[1]["add_3"]["loglik"], together[2]["add_3"]["loglik"])


def test_an_interrupted_evaluation_keeps_the_tasks_it_scored(setup, tiny, monkeypatch, tmp_path):
    """Scores are kept task by task while an evaluation runs: stopped in its second task, a rerun
    scores only the tasks left, and the finished cache equals an uninterrupted run's."""
    data, sup = setup
    model, tok = tiny
    res = train.train(data, GCFG, train.TrainingConfig.preset("smoke", "weight", steps=2), 0, sup,
                      run_dir=tmp_path / "run", progress=False)
    enc, lcfg = models.load_encoder(), ZooConfig.preset("smoke").lora_config()
    names = ["add_3", "caesar_1"]
    real, calls = sample.evaluate_adapters, []

    def stop_in_second(*a, **k):
        calls.append(a[2].name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(sample, "evaluate_adapters", stop_in_second)
    with pytest.raises(KeyboardInterrupt):
        sample.evaluate_many([res], enc, model, tok, data.lora_tokenizer, lcfg, names, 3, progress=False)
    assert [p.name.endswith(".partial") for p in (tmp_path / "run").glob("eval_*")] == [True]
    calls.clear()
    monkeypatch.setattr(sample, "evaluate_adapters", lambda *a, **k: calls.append(a[2].name) or real(*a, **k))
    resumed = sample.evaluate_many([res], enc, model, tok, data.lora_tokenizer, lcfg, names, 3, progress=False)[0]
    assert calls == ["caesar_1"] and [p.name.endswith(".json") for p in (tmp_path / "run").glob("eval_*")] == [True]
    fresh = real(model, tok, tasks.get_task("add_3"), [data.lora_tokenizer.detokenize(
        sample.generate_tokens(res.generator, enc, tasks.get_task("add_3").prompts("train")))], n=3, lora_config=lcfg)[0]
    np.testing.assert_allclose(resumed["add_3"]["loglik"], fresh.loglik, atol=1e-5)


def test_evaluate_caches_the_generated_delta_and_skips_minilm_when_all_is_cached(setup, tiny, monkeypatch, tmp_path):
    data, sup = setup
    model, tok = tiny
    res = train.train(data, GCFG, train.TrainingConfig.preset("smoke", "weight", steps=2), 0, sup,
                         run_dir=tmp_path / "run", progress=False)
    enc, lcfg = models.load_encoder(), ZooConfig.preset("smoke").lora_config()
    teacher = {"add_3": np.random.default_rng(0).normal(size=(2, model.config.hidden_size)).astype(np.float32)}
    args = (enc, model, tok, data.lora_tokenizer, lcfg, ["add_3"], 3, sup, teacher)
    first = sample.evaluate_many([res], *args, progress=False)[0]["add_3"]
    assert len(list((tmp_path / "run").glob("delta_*.json"))) == 1
    tokens = sample.generate_tokens(res.generator, enc, tasks.get_task("add_3").prompts())
    np.testing.assert_allclose(first["delta"], sup(tokens[None])[0].numpy(), atol=1e-6)   # the Δ of the generated adapter
    counts = {"minilm": 0, "delta": 0}
    real_encode, real_call = sample.encode_prompts, type(sup).__call__
    monkeypatch.setattr(sample, "encode_prompts", lambda *a, **k: counts.__setitem__("minilm", counts["minilm"] + 1) or real_encode(*a, **k))
    monkeypatch.setattr(type(sup), "__call__", lambda self, t: counts.__setitem__("delta", counts["delta"] + 1) or real_call(self, t))
    again = sample.evaluate_many([res], *args, progress=False)[0]["add_3"]
    assert counts == {"minilm": 0, "delta": 0}                        # scores and Δ read back, nothing run
    np.testing.assert_array_equal(again["delta"], first["delta"])
    np.testing.assert_array_equal(again["delta_cos"], first["delta_cos"])
    monkeypatch.setattr(sup, "key", "other-probes")                   # other probes or base model: Δ recomputed
    sample.evaluate_many([res], *args, progress=False)
    assert counts == {"minilm": 1, "delta": 1}


def test_run_folders_are_keyed_by_what_changes_training(setup):
    data, sup = setup
    w = train.TrainingConfig.preset("smoke", "weight")
    key = lambda cfg, seed=0: train.run_dir_for(data, GCFG, cfg, seed, sup).name
    assert key(w) == key(train.TrainingConfig.preset("smoke", "weight", steps=50))   # longer: same run, continued
    assert key(w) != key(w, seed=1) and key(w) != key(w.with_objective("delta"))
    assert key(w) != key(train.TrainingConfig.preset("smoke", "weight", lr=1e-2))
    # Each objective trains at its own rate: `lr` without a delta term, `delta_lr` with one; a rate the
    # objective does not use leaves its runs where they are.
    d = train.TrainingConfig.preset("smoke", "delta")
    assert (w.effective_lr, d.effective_lr) == (w.lr, d.delta_lr) and d.delta_lr != d.lr
    assert key(w) == key(train.TrainingConfig.preset("smoke", "weight", delta_lr=1e-2))
    assert key(d) == key(train.TrainingConfig.preset("smoke", "delta", lr=1e-2))
    assert key(d) != key(train.TrainingConfig.preset("smoke", "delta", delta_lr=1e-2))


def test_training_needs_deltas_for_a_delta_objective(setup):
    data, sup = setup
    with pytest.raises(ValueError, match="DeltaSupervision"):
        train.train(data, GCFG, train.TrainingConfig.preset("smoke", "delta"), 0, None, progress=False)


def test_ddp_two_cpu_processes_end_with_identical_generators(setup, tmp_path, lab_home):
    """`accelerate launch` with 2 CPU processes (gloo): different batches per rank, averaged gradients."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", LLGBM_HOME=str(lab_home))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llgbm.ddp", "--profile", "smoke", "--model", "tiny",
           "--zoo", str(lab_home / "zoo"), "--deltas", os.environ["LLGBM_DELTAS"], "--objective", "multitask",
           "--steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    init = load_file(str(out / "init.safetensors"))
    assert any(not torch.equal(init[k], ranks[0][k]) for k in init)       # and they did train
    assert (out / "batches.txt").read_text().count("\n") == 2
    lines = (out / "batches.txt").read_text().splitlines()
    assert lines[0] != lines[1], "both ranks drew the same batches"
