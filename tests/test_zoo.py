import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llgbm import evaluation, tasks, zoo

CFG = zoo.ZooConfig.preset("smoke", steps=6, save_every=2, n_checkpoints=2, eval_items=4)


def _weights(root, task="add_1", step=6):
    return load_file(str(root / task / "seed0" / f"step{step:04d}" / "adapter_model.safetensors"))


def test_presets_follow_the_seed():
    quick = zoo.ZooConfig.preset("quick")
    assert (quick.rank, quick.alpha) == (8, 16) and len(quick.targets) == 7
    assert len(quick.task_names()) >= 24 and all(t in tasks.list_tasks() for t in quick.task_names())
    assert zoo.ZooConfig.preset("quick", rank=4).rank == 4
    with pytest.raises(ValueError, match="unknown profile"):
        zoo.ZooConfig.preset("huge")


def test_teacher_learns_and_writes_peft_checkpoints(tiny, lab_home):
    from peft import PeftModel
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", steps=12, lr=1e-2, n_checkpoints=2, eval_items=4, batch_size=8)
    rec = zoo.train_teacher(model, tok, "add_1", 0, cfg, lab_home / "zoo")
    assert [c["step"] for c in rec["checkpoints"]] == [11, 12]
    assert sum(rec["losses"][-4:]) / 4 < rec["losses"][0] - 0.3   # it learns (a random 2-layer net: slowly)
    assert not any("lora" in n for n, _ in model.named_modules())  # base model left clean
    peft_model = PeftModel.from_pretrained(model, lab_home / "zoo" / rec["checkpoints"][-1]["path"])
    assert zoo.zoo_dir("smoke", "tiny").parent == lab_home / "zoo"
    rows = zoo.write_manifest(lab_home / "zoo")
    assert {"task", "seed", "step", "train_loss", "test_acc", "hash"} <= set(rows[0])
    assert rows[0]["hash"] != rows[1]["hash"]
    peft_model.unload()


def test_resume_reproduces_the_uninterrupted_run_without_repeating_steps(tiny, lab_home, monkeypatch):
    model, tok = tiny
    ref = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "a", progress=False)
    assert zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "b", stop_after=3, progress=False) is None
    assert (lab_home / "b" / "add_1" / "seed0" / "state.safetensors").exists()
    calls = []
    real = zoo.target_logprobs
    monkeypatch.setattr(zoo, "target_logprobs", lambda *a: calls.append(1) or real(*a))
    resumed = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "b", progress=False)
    assert len(calls) == CFG.steps - 3                      # only the missing steps ran
    assert resumed["losses"] == pytest.approx(ref["losses"], rel=1e-4)
    for k, v in _weights(lab_home / "a").items():
        torch.testing.assert_close(_weights(lab_home / "b")[k], v, atol=1e-6, rtol=1e-5)
    # a finished run is never trained again
    calls.clear()
    again = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "b", progress=False)
    assert calls == [] and again["checkpoints"] == resumed["checkpoints"]


def test_nan_adapter_is_refused(tiny, lab_home):
    model, tok = tiny
    rec = zoo.train_teacher(model, tok, "add_1", 0, CFG, lab_home / "z", progress=False)
    folder = lab_home / "z" / rec["checkpoints"][-1]["path"]
    w = load_file(str(folder / "adapter_model.safetensors"))
    key = next(iter(w))
    w[key][0, 0] = float("nan")
    save_file(w, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="NaN/Inf"):
        zoo.load_adapter_weights(folder)


def test_diverging_teacher_is_refused(tiny, lab_home):
    model, tok = tiny
    with pytest.raises(ValueError, match="NaN/Inf|diverged"):
        zoo.train_teacher(model, tok, "add_1", 0, zoo.ZooConfig.preset("smoke", lr=1e30), lab_home / "nan",
                          progress=False)
    assert not any("lora" in n for n, _ in model.named_modules())
    assert not (lab_home / "nan" / "add_1" / "seed0" / "run.json").exists()


def test_user_task_runs_through_the_zoo(tiny, lab_home):
    model, tok = tiny
    tasks.register_task("echo_word", "Repeat the word.", [(w, w) for w in ["alpha", "beta", "gamma", "delta",
                        "kappa", "sigma", "omega", "theta"]], overwrite=True)
    cfg = zoo.ZooConfig.preset("smoke", tasks=("echo_word",), eval_items=4)
    recs = zoo.build_zoo(model, tok, cfg, lab_home / "zoo", progress=False)
    assert recs[0]["task"] == "echo_word"
    assert json.loads((lab_home / "zoo" / "manifest.json").read_text())[0]["task"] == "echo_word"


def test_flops_count_matches_the_parameter_count(real_home):
    from llgbm.models import model_config
    cfg = model_config("smollm2")
    per_token = zoo.training_flops_per_token(cfg, zoo.ZooConfig(), target_fraction=0.0)
    body = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert per_token == 4 * body and 100e6 < body < 110e6   # ~106M non-embedding parameters


def test_a_run_trained_under_another_config_is_refused_not_reused(tiny, lab_home):
    model, tok = tiny
    cfg = zoo.ZooConfig.preset("smoke", steps=2, n_checkpoints=1, eval_items=2)
    zoo.train_teacher(model, tok, "add_1", 0, cfg, lab_home / "z", progress=False)
    with pytest.raises(ValueError, match="another config"):
        zoo.train_teacher(model, tok, "add_1", 0, zoo.ZooConfig.preset("smoke", steps=3, n_checkpoints=1),
                          lab_home / "z", progress=False)
    # eval size, tasks and seeds do not change what a run trains: same folder, same key
    assert zoo.ZooConfig.preset("quick", eval_items=7, seeds=(5,)).training_key() == zoo.ZooConfig.preset("quick").training_key()
    assert zoo.zoo_dir("quick", "smollm2") != zoo.zoo_dir("quick", "smollm2", zoo.ZooConfig.preset("quick", lr=1e-3))


def test_throughput_uses_the_peak_measured_when_the_zoo_trained(tiny, lab_home, monkeypatch):
    model, tok = tiny
    calls = []
    monkeypatch.setattr(zoo, "measure_matmul_peak", lambda: calls.append(1) or 1e11)
    cfg = zoo.ZooConfig.preset("smoke", tasks=("add_1", "add_3"), steps=2, n_checkpoints=1, eval_items=2)
    recs = zoo.build_zoo(model, tok, cfg, lab_home / "z", progress=False)
    assert calls == [1] and all(r["matmul_peak_flops"] == 1e11 for r in recs)   # measured once, stored per run
    again = zoo.build_zoo(model, tok, cfg, lab_home / "z", progress=False)
    assert calls == [1]                                                          # a finished zoo measures nothing
    tp = zoo.zoo_throughput(again, model.config, cfg)
    # The peak is a train-time-weighted mean over runs, so compare up to float rounding.
    assert tp["peak_flops_per_s"] == pytest.approx(1e11, rel=1e-12) and tp["peak_fraction"] == pytest.approx(tp["flops_per_s"] / 1e11)
