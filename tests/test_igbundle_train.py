"""geomlib.igbundle training, commands and chat app on the tiny model; NF4 loading on CPU."""
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from geomlib.igbundle import host as igm
from geomlib.igbundle.train import IGTrainConfig, load_base, train, unload

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw):
    return IGTrainConfig.preset("smoke", output_dir=str(tmp_path / kw.pop("name", "run")), **kw)


def test_training_lowers_the_loss_and_logs_sigma_per_layer(tiny, lab_home, tmp_path):
    model, tok = tiny
    cfg = _cfg(tmp_path, max_steps=12, learning_rate=1e-2, ig=replace(IGTrainConfig.preset("smoke").ig, sheaf="normalised"))
    res = train(cfg, model, tok, progress=False)
    try:
        h = res["history"]
        assert len(h["loss"]) == 12 and sum(h["loss"][-3:]) / 3 < h["loss"][0]
        assert all(len(s) == model.config.num_hidden_layers and all(v > 0 for v in s) for s in h["sigma"])
        assert all(x > 0 for x in h["sheaf"])                 # the normalised sheaf loss is alive
        assert res["params"] == res["host"].trainable_params()
        assert (tmp_path / "run" / "checkpoint-12" / igm.META).exists()
    finally:
        unload(model)
    assert not hasattr(model, "igbundle")


def test_an_interrupted_run_resumes_to_the_same_result(tiny, lab_home, tmp_path):
    model, tok = tiny
    straight = train(_cfg(tmp_path, name="a", max_steps=4), model, tok, progress=False)
    unload(model)
    train(_cfg(tmp_path, name="b", max_steps=4), model, tok, progress=False, stop_after=2)
    unload(model)
    resumed = train(_cfg(tmp_path, name="b", max_steps=4), model, tok, progress=False)
    unload(model)
    assert resumed["resumed_from"] == 2
    assert resumed["history"]["loss"] == pytest.approx(straight["history"]["loss"], rel=1e-5)
    a = igm.verify(tmp_path / "a" / "checkpoint-4")
    from safetensors.torch import load_file
    wa, wb = (load_file(str(tmp_path / r / "checkpoint-4" / igm.WEIGHTS)) for r in ("a", "b"))
    assert a["step"] == 4 and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.parametrize("method", ["houlsby", "lora"])
def test_the_comparison_methods_train_and_unload(tiny, lab_home, tmp_path, method):
    model, tok = tiny
    before = {n: p.clone() for n, p in model.named_parameters()}
    res = train(_cfg(tmp_path, method=method, max_steps=3), model, tok, progress=False)
    assert res["params"] > 0 and all(torch.isfinite(torch.tensor(res["history"]["loss"])))
    unload(model)
    after = dict(model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], p) for n, p in before.items())


def test_yaml_config_has_the_seeds_keys_and_names_unknown_ones(tmp_path):
    cfg = IGTrainConfig.from_yaml(ROOT / "geomlib" / "configs" / "igbundle_smollm2.yaml")
    assert (cfg.ig.bottleneck_dim, cfg.ig.num_components, cfg.ig.num_categories, cfg.ig.latent_dim) == (256, 4, 16, 128)
    assert (cfg.ig.lora_r, cfg.ig.lora_alpha, cfg.ig.sheaf_weight) == (8, 32, 0.01) and cfg.save_steps == 20
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  max_step: 5\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) in the training: section of .*bad.yaml: \['max_step'\]"):
        IGTrainConfig.from_yaml(bad)
    bad.write_text("ig_adapter:\n  curvature: 1.0\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) in the ig_adapter: section.*curvature"):
        IGTrainConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="unknown method"):
        IGTrainConfig(method="prefix")


def test_verify_command_exits_non_zero_naming_the_problem(tiny, lab_home, tmp_path):
    model, tok = tiny
    train(_cfg(tmp_path, max_steps=2), model, tok, progress=False)
    unload(model)
    ckpt = tmp_path / "run" / "checkpoint-2"
    ok = subprocess.run([sys.executable, "-m", "geomlib.igbundle", "verify", "--checkpoint", str(ckpt)], capture_output=True, text=True)
    assert ok.returncode == 0 and "checkpoint OK" in ok.stdout
    data = (ckpt / igm.WEIGHTS).read_bytes()
    (ckpt / igm.WEIGHTS).write_bytes(data[:100])
    bad = subprocess.run([sys.executable, "-m", "geomlib.igbundle", "verify", "--checkpoint", str(ckpt)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: checkpoint INVALID") and "truncated or corrupted" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_validate_shows_base_and_adapter_side_by_side(tiny, lab_home, tmp_path):
    from geomlib.igbundle import app
    model, tok = tiny
    train(_cfg(tmp_path, max_steps=2), model, tok, progress=False)
    unload(model)
    adapted, tok2, meta = app.load_checkpoint(tmp_path / "run" / "checkpoint-2")
    with torch.no_grad():
        for p in adapted.igbundle.adapters[0].out_proj.parameters():
            p.add_(1.0)                                    # make the adapter visibly change generations
    out = app.validate(adapted, tok2, prompts=app.PROMPTS[:2], max_new_tokens=4)
    assert len(out["rows"]) == 2 and out["average_sigma"] > 0
    assert any(r["base"] != r["igbundle"] for r in out["rows"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chat_app_answers_a_message_on_localhost(tiny, lab_home):
    from gradio_client import Client

    from geomlib.igbundle import app
    from geomlib.igbundle.adapter import IGBundleConfig
    model, tok = tiny
    igm.attach(model, IGBundleConfig(bottleneck_dim=16, latent_dim=8, num_categories=4))
    port = _free_port()
    demo = app.serve(model, tok, port=port, block=False)
    try:
        answer = Client(f"http://127.0.0.1:{port}/", verbose=False).predict("Add 1 to 41.", api_name="/chat")
        assert isinstance(answer, str) and answer == app.reply(model, tok, "Add 1 to 41.", max_new_tokens=64, chat=True)
    finally:
        demo.close()
        igm.detach(model)


@pytest.mark.real_model
def test_nf4_base_loads_and_trains_on_cpu(real_home, lab_home, tmp_path):
    import bitsandbytes as bnb
    cfg = _cfg(tmp_path, model="smollm2", load_in_4bit=True, max_steps=1, per_device_train_batch_size=1, method="houlsby")
    model, tok = load_base(cfg)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    res = train(cfg, model, tok, progress=False)
    assert len(res["history"]["loss"]) == 1 and res["history"]["loss"][0] < 20
    unload(model)


# ------------------------------------------------------------------ notebook 10's ledger

def _grid(rng, levels: dict[str, float], seeds, tasks, already=False) -> dict:
    import numpy as np
    return {(m, s): dict(scores={t: {"correct": (rng.random(60) < acc).astype(float),
                                     "loglik": np.log(acc) + 0.05 * rng.standard_normal(60)} for t in tasks},
                         seconds_per_step=0.5, already_trained=already, history={}) for m, acc in levels.items() for s in seeds}


def test_ledger_tables_floor_and_claims_follow_the_runs():
    import numpy as np
    import pandas as pd

    from geomlib.igbundle import ledger
    from llgbm.notebook.report import uncited
    rng, tasks, seeds = np.random.default_rng(0), ["a", "b"], (0, 1)
    runs = _grid(rng, {"igbundle": 0.05, "lora": 0.6, "houlsby": 0.5}, seeds, tasks, already=True)
    base = {t: {"correct": np.zeros(60), "loglik": np.full(60, -4.0)} for t in tasks}
    params = {"igbundle": 100, "lora": 100, "houlsby": 100}
    frame, summary, tests = ledger.methods_table(runs, base, params, tasks)
    assert list(summary.index) == ["igbundle", "lora", "houlsby", "base"]
    assert summary.loc["base", "trainable params"] == 0 and summary.loc["lora", "s / step (median)"] == 0.5
    assert list(tests.index) == ["igbundle − lora", "igbundle − houlsby", "houlsby − lora"]
    abl = {m: _grid(rng, {"igbundle": acc}, seeds, tasks) for m, acc in (("off", 0.05), ("normalised", 0.4))}
    acc, abl_tests = ledger.ablation(runs, abl, tasks, seeds)
    assert acc["normalised"] > acc["faithful"] and abs(acc["off"] - acc["faithful"]) < 0.1
    assert list(abl_tests.index) == ["off − faithful", "normalised − faithful"] and abl_tests.loc["normalised − faithful", "diff_acc_lo"] > 0
    assert ledger.already_trained(runs, *abl.values()) == (6, 10)
    sigma = pd.DataFrame(dict(step=[1, 1, 2, 2], layer=[0, 1, 0, 1], sigma=[1.0, 1.0, 5.0, 7.0]))
    mem = dict(fp32=dict(peak_rss_mb=900, peak_above_imports_mb=400, seconds_per_step=1.0),
               nf4=dict(peak_rss_mb=700, peak_above_imports_mb=200, seconds_per_step=3.0), acc_nf4=0.1, acc_fp32_same_items=0.1)
    init = dict(faithful_value=0.0, faithful_grad_norm=0.0, normalised_value=0.3, latent_dim=128, faithful_omega_max_offdiag=0.0)
    trained = dict(faithful_value=1e-22, faithful_grad_norm=3e-21, normalised_value=0.3, latent_dim=24, faithful_omega_max_offdiag=1e-21)
    m = ledger.metrics(summary, tests, params, 10**6, init, trained, acc, abl_tests, mem, sigma, n_items=120, n_seeds=2, n_ablation_seeds=2,
                       steps=5, seconds=60.0, budget_seconds=25 * 60, already=6, runs=10)
    assert m["floor_met"] == 0.0 and m["sigma_final_mean"] == 6.0 and m["acc_lora_mean"] > m["acc_igbundle_mean"]
    assert m["sigma_cap"] == pytest.approx(1000.0) and m["sheaf_trained_latent_dim"] == 24
    verdict = ledger.verdict(m, tests, list(params), 10)
    assert "NOT met: cleared by lora, houlsby" in verdict and "IGBundle against LoRA: refuted" in verdict
    assert "1.0 min (budget 25 min)" in verdict and "6 of 10 runs" in verdict
    claims = ledger.claims(m, tests, abl_tests)
    assert claims[0][2].startswith("refuted (more parameters than LoRA")     # 1M at the seed's defaults > 100
    assert claims[1][2] == ("refuted as written (identically zero at the seed's D_lat 128; indistinguishable from no loss at the "
                            "D_lat 24 trained here)")
    assert "at the D_lat 24 trained here: value 1e-22" in claims[1][3]
    assert claims[2][3].startswith("sigma is the mean") and "6.0 at the last" in claims[2][3] and "caps it at 1000" in claims[2][3]
    for text in [verdict, *(f"{c[2]} | {c[3]}" for c in claims)]:
        assert uncited(text, m) == []


def test_a_config_writes_the_yaml_it_reads(tmp_path):
    """to_yaml is from_yaml's inverse (the speed runs of notebook 10 train through a written YAML, which the
    strict reader checks like a user's)."""
    import yaml
    for cfg in (IGTrainConfig.from_yaml(ROOT / "geomlib" / "configs" / "igbundle_smollm2.yaml"), IGTrainConfig.preset("quick"),
                IGTrainConfig.preset("smoke", method="houlsby", seed=2)):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_yaml()))
        assert IGTrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
