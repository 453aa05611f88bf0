"""Every notebook runs under papermill with the smoke profile; committed notebooks are clean."""
import json
import subprocess
from pathlib import Path

import pytest

from llgbm.core import artefacts, flops
from llgbm.notebook import report, run

NOTEBOOKS = run.notebooks()
REQUIRED = {
    "00_baseline": {"n_tasks", "n_families", "n_heldout_tasks", "n_checkpoints", "base_acc_mean", "teacher_acc_mean",
                    "base_loglik_mean", "teacher_loglik_mean", "zoo_tokens_per_s", "zoo_peak_fraction",
                    "tokenizer_roundtrip_max_err", "generator_params", "heldout_items", "gap_recovery_loglik",
                    "gap_recovery_loglik_ci_low", "gap_recovery_loglik_ci_high", "gap_recovery_acc",
                    "gap_recovery_acc_ci_low", "gap_recovery_acc_ci_high", "generation_seconds",
                    "teacher_train_seconds", "speedup"},
    "01_delta_caching": {"silhouette_family", "silhouette_task", "silhouette_weights_family", "cache_speedup",
                         "n_adapters", "n_identical_delta_pairs"},
    "02_dataset": {"n_train_checkpoints", "n_heldout_checkpoints", "heldout_leak", "delta_from_tokens_cos",
                   "weight_target_zero_pred_mse"},
    "03_differentiable_delta": {"functional_vs_peft_max_abs_diff", "functional_call_vs_peft_max_abs_diff",
                                "functional_overhead_ratio", "backward_over_forward", "grad_norm_min_block"},
    "04_multitask": {"weight_loss_first", "weight_loss_last", "delta_loss_first", "delta_loss_last", "heldout_delta_cos"},
    "04b_ablations": {f"{m}_{o}_{s}" for m in ("delta_cos", "gap_recovery") for o in ("weight", "multitask", "delta")
                      for s in ("mean", "std")} | {"p_value_delta_vs_weight", "p_value_multitask_vs_weight"},
    "05_delta_only": {"gap_recovery_long", "gap_recovery_long_ci_low", "gap_recovery_long_ci_high", "delta_cos_long",
                      "loglik_diff_vs_baseline"},
    "06_zeroshot": {"heldout_items_near", "heldout_items_far", "n_seeds", "prompt_tokens_icl", "prompt_ratio", "notebook_seconds",
                    "user_acc_adapter"}
                   | {f"{g}_gap_{m}{s}" for g in ("near", "far", "all") for m in ("icl", "multitask_lora", "sft", "cd", "adapter_icl",
                                                                                 "other", "random", "base", "teacher")
                      for s in ("", "_ci_low", "_ci_high")}
                   | {f"doubling_{o}_{g}" for o in ("sft", "cd") for g in ("near", "far")},
    "10_igbundle": {"params_igbundle", "params_lora", "params_houlsby", "acc_igbundle_mean", "acc_lora_mean", "acc_houlsby_mean",
                    "loglik_igbundle_mean", "loglik_lora_mean", "loglik_houlsby_mean", "loglik_diff_igbundle_vs_lora",
                    "loglik_diff_igbundle_vs_lora_ci_low", "loglik_diff_igbundle_vs_lora_ci_high", "loglik_diff_igbundle_vs_houlsby",
                    "loglik_diff_igbundle_vs_houlsby_ci_low", "loglik_diff_igbundle_vs_houlsby_ci_high", "eval_items", "n_seeds",
                    "sheaf_faithful_value_at_init", "sheaf_faithful_grad_norm_at_init", "sheaf_normalised_value_at_init",
                    "acc_sheaf_off", "acc_sheaf_faithful", "acc_sheaf_normalised", "peak_mem_mb_fp32", "peak_mem_mb_nf4",
                    "seconds_per_step_fp32", "seconds_per_step_nf4", "acc_nf4", "sigma_final_mean", "notebook_seconds"},
    "11_calabi": {"ppl_dense", "tokens_per_s_dense", "ppl_plain_20", "ppl_svdllm_40", "params_asvd_20",
                  "ppl_energy_gap_20", "best_ppl_ratio_20"},
    "12_coordinates": {"cl_tasks", "n_seeds", "routing_acc", "params_geometric_llama", "params_plain_llama", "params_seed_config",
                       "val_loss_geometric", "val_loss_plain", "val_loss_leaky", "theta_silhouette_family", "notebook_seconds"}
                      | {f"{k}_{m}{s}" for k in ("acc", "bwt") for s in ("", "_ci_low", "_ci_high")
                         for m in ("coords_given", "coords_inferred", "seq_lora", "joint_lora", "replay", "per_task_lora")},
    "13_inl": {"params_inl", "params_transformer", "val_loss_inl", "val_loss_transformer", "val_loss_adaptive_minus_fixed",
               "mean_iterations_adaptive", "max_iterations", "tokens_per_s_fixed_b1", "tokens_per_s_adaptive_b1",
               "tokens_per_s_fixed_b8", "tokens_per_s_adaptive_b8", "speedup_adaptive_b1", "speedup_adaptive_b8", "speedup_ceiling",
               "peak_mem_mb_train_inl", "peak_mem_mb_train_transformer", "embedding_params_ratio",
               "val_loss_lowrank_embedding_minus_full", "deterministic", "notebook_seconds", "unigram_entropy"},
}


# Values a smoke run must produce (tiny random model, 4 tasks, 2 seeds): ranges that a broken
# computation falls outside of, not only the presence of a name.
SANE = {
    "00_baseline": dict(n_tasks=(4, 4), n_heldout_tasks=(2, 2), n_checkpoints=(8, 8), base_acc_mean=(0, 1),
                        teacher_acc_mean=(0, 1), base_loglik_mean=(-30, 0), teacher_loglik_mean=(-30, 0),
                        zoo_tokens_per_s=(1, 1e7), zoo_peak_fraction=(0, 1), tokenizer_roundtrip_max_err=(0, 1e-3),
                        generator_params=(1e3, 1e7), heldout_items=(8, 8), generation_seconds=(0, 60), speedup=(0, 1e6)),
    "01_delta_caching": dict(silhouette_family=(-1, 1), silhouette_weights_family=(-1, 1), cache_speedup=(1, 1e7),
                             n_adapters=(8, 8), n_identical_delta_pairs=(0, 0), cache_recompute_max_abs_diff=(0, 1e-4)),
    "02_dataset": dict(n_train_checkpoints=(4, 4), n_heldout_checkpoints=(4, 4), heldout_leak=(0, 0),
                       delta_from_tokens_cos=(0.999, 1.0001), weight_target_zero_pred_mse=(1e-3, 1e3)),
    "03_differentiable_delta": dict(functional_vs_peft_max_abs_diff=(0, 1e-4), functional_call_vs_peft_max_abs_diff=(0, 1e-4),
                                    lora_effect_max_abs_logit=(1e-7, 1e3), base_params_with_grad=(0, 0),
                                    grad_norm_min_block=(1e-12, 1e6), functional_overhead_ratio=(0.1, 500)),  # tiny: hook overhead dominates
    "04_multitask": dict(steps=(4, 4), heldout_delta_cos=(-1, 1), delta_loss_first=(0, 1e3), weight_loss_first=(0, 1e3)),
    "04b_ablations": dict(n_seeds=(2, 2), heldout_items=(8, 8), delta_cos_weight_mean=(-1, 1), delta_cos_delta_mean=(-1, 1),
                          p_value_delta_vs_weight=(0, 1), acc_weight_mean=(0, 1), runs_already_trained=(1, 6)),
    "05_delta_only": dict(steps_long=(8, 8), n_seeds=(2, 2), delta_cos_long=(-1, 1), acc_diff_vs_baseline=(-1, 1)),
    "06_zeroshot": dict(heldout_items_near=(8, 8), heldout_items_far=(8, 8), n_seeds=(2, 2), near_gap_base=(0, 0),
                        near_gap_teacher=(1, 1), far_gap_teacher=(1, 1), near_acc_icl=(0, 1), far_seeds_sft=(2, 2),
                        all_seeds_other=(1, 1), prompt_tokens_icl=(5, 500), user_acc_adapter=(0, 1), notebook_seconds=(1, 900)),
    "10_igbundle": dict(sheaf_faithful_value_at_init=(0, 0), sheaf_faithful_grad_norm_at_init=(0, 0),
                        sheaf_normalised_value_at_init=(1e-9, 1e3), eval_items=(16, 16), n_seeds=(2, 2), acc_nf4=(0, 1),
                        peak_mem_mb_fp32=(50, 1e5), peak_mem_mb_nf4=(50, 1e5), sigma_final_mean=(1e-3, 1e3)),
    "11_calabi": dict(ppl_dense=(1, 1e6), params_plain_20=(1, 1e9), best_ppl_ratio_20=(0.5, 1e6), eval_tokens=(128, 128)),
    "12_coordinates": dict(cl_tasks=(4, 4), n_seeds=(2, 2), eval_items=(4, 4), routing_acc=(0, 1), params_seed_config=(1.0e8, 1.15e8),
                           bwt_per_task_lora=(0, 0), acc_coords_given=(0, 1), acc_seq_lora=(0, 1), theta_silhouette_family=(-1, 1),
                           val_loss_leaky=(0, 20), coordinates_scaling_exponent=(-2, 2)),
    "13_inl": dict(deterministic=(1, 1), max_iterations=(5, 5), mean_iterations_adaptive=(1, 5), speedup_ceiling=(1, 2),
                   val_loss_inl=(0, 20), unigram_entropy=(1, 10), tokens_per_s_fixed_b1=(1, 1e7), peak_mem_mb_train_inl=(1, 1e5),
                   embedding_params_ratio_seed_3b=(0.12, 0.14), val_loss_small_k_minus_fixed=(-1, 1), steps=(8, 8)),
}


# A kind of trained artefact each of these notebooks must record (llgbm.core.artefacts).
TRAINS = {"00_baseline": "teacher (zoo)", "01_delta_caching": "teacher (zoo)", "04b_ablations": "generator run",
          "06_zeroshot": "held-out teacher (to its dev plateau)", "10_igbundle": "IGBundle run",
          "12_coordinates": "continual-learning run", "13_inl": "INL run"}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_clean_and_parametrised(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), \
        f"{nb.name} carries outputs: clear them before committing (results belong in reports/)"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and 'profile = "quick"' in "".join(params[0]["source"])


@pytest.fixture(scope="module")
def suite_home(tmp_path_factory, real_home):
    """One home for the whole notebook suite: later phases read the zoo and deltas of earlier ones."""
    root = tmp_path_factory.mktemp("suite")
    (root / "home").mkdir()
    (root / "home" / "models").symlink_to(real_home, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLGBM_HOME", str(root / "home"))
        mp.setenv("LLGBM_REPORTS", str(root / "reports"))
        mp.setenv("LLGBM_DELTAS", str(root / "deltas"))
        yield root


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])  # phase order: 00 builds the zoo
def test_notebook_runs_under_smoke(nb, suite_home):
    run.run_notebook(nb, "smoke", timeout=600)
    out = suite_home / "reports" / "smoke" / nb.stem
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED[nb.stem] <= set(metrics), f"missing metrics: {REQUIRED[nb.stem] - set(metrics)}"
    bad = {k: (metrics[k], lo, hi) for k, (lo, hi) in SANE[nb.stem].items() if metrics[k] is None or not lo <= metrics[k] <= hi}
    if nb.stem == "13_inl":               # INL and transformer at the same parameter count (±10%)
        assert abs(metrics["params_transformer"] / metrics["params_inl"] - 1) <= 0.10, metrics
    if nb.stem == "06_zeroshot":          # the k-shot prompt is the long one
        assert metrics["prompt_ratio"] > 2, metrics
    if nb.stem == "10_igbundle":          # the comparison is at equal trainable parameters (±10%)
        assert all(abs(metrics[f"params_{m}"] / metrics["params_lora"] - 1) <= 0.10 for m in ("igbundle", "houlsby")), metrics
    assert not bad, f"metrics outside their sane range (value, low, high): {bad}"
    assert list(out.glob("*.png")), "the notebook saved no figure"
    assert flops.read(out / "flops.json")["flops"] > 0, "its kernel counted no FLOPs, or wrote none by its exit"
    if nb.stem in TRAINS:          # what it trains or reads back is on its record
        kinds = {r["kind"] for r in artefacts.read(out / "artefacts.json").values()}
        assert TRAINS[nb.stem] in kinds, kinds
    text = report.write_report("smoke", [nb]).read_text()
    assert f"notebooks/{nb.name}" in text and "Claims ledger" in text


@pytest.mark.notebook
def test_every_claim_has_one_row_across_the_suite(suite_home):
    """After the smoke suite (the tests above, in phase order): no claim is measured twice, so no
    claim carries two verdicts."""
    rows = [c for f in sorted((suite_home / "reports" / "smoke").glob("*/claims.json")) for c in json.loads(f.read_text())]
    assert len({p.parent.name for p in (suite_home / "reports" / "smoke").glob("*/claims.json")}) >= 9, "run the smoke suite first"
    claims = [r["claim"] for r in rows]
    assert len(claims) == len(set(claims)), {c for c in claims if claims.count(c) > 1}


def test_runner_stops_on_a_failing_notebook(tmp_path, monkeypatch, capsys):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "quick"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise RuntimeError('planted failure')"),
        nbformat.v4.new_code_cell("open('never.txt', 'w')")],
        metadata={"kernelspec": {"name": "llgbm", "display_name": "LLGBM Lab", "language": "python"}})
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "00_broken.ipynb")
    nbformat.write(nb, tmp_path / "nb" / "01_after.ipynb")
    monkeypatch.setattr(run, "NOTEBOOKS", tmp_path / "nb")
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path / "reports"))
    assert run.main(["--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "00_broken.ipynb FAILED" in err and "planted failure" in err
    assert not (tmp_path / "nb" / "never.txt").exists()
    assert not (tmp_path / "reports" / "smoke" / "_executed" / "01_after.ipynb").exists()


def test_a_stage_clock_cold_total_is_filed_as_the_notebooks_cold_run(tmp_path, monkeypatch):
    """06 keeps its cold total on a stage clock across sittings; a sitting that read stages back is
    filed as what it was, and the clock's total as the notebook's cold run (no FLOPs: not every sitting
    counted them), not an older cold run of other code."""
    import nbformat
    write = ("import json, os, pathlib\np = pathlib.Path(os.environ['LLGBM_REPORTS']) / 'smoke' / '06_zeroshot'\n"
             "p.mkdir(parents=True, exist_ok=True)\n(p / 'metrics.json').write_text(json.dumps(dict(cold_minutes=200.0, cold_split=1.0)))")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('profile = "quick"', metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(write)],
                                  metadata={"kernelspec": {"name": "llgbm", "display_name": "LLGBM Lab", "language": "python"}})
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "06_zeroshot.ipynb")
    (tmp_path / "home" / "suite").mkdir(parents=True)
    (tmp_path / "home" / "suite" / "stage.json").write_text("{}")          # its own cache: not a cold run
    monkeypatch.setattr(run, "NOTEBOOKS", tmp_path / "nb")
    monkeypatch.setenv("LLGBM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path / "reports"))
    assert run.stage_clock_cold("smoke", "06_zeroshot") is None
    assert run.main(["--profile", "smoke", "--note", "a sitting"]) == 0
    entry = json.loads((tmp_path / "reports" / "smoke" / "timings.json").read_text())["06_zeroshot"]
    cold, warm = entry["runs"]["cold"], entry["runs"]["warm"]
    assert cold["seconds"] == 12000.0 and "stage clock" in cold["note"] and "errs high" in cold["note"] and "flops" not in cold
    assert warm["note"] == "a sitting" and warm["seconds"] < 600 and entry["seconds"] == warm["seconds"]   # latest: the sitting
    assert warm["peak_flops_per_s"] > 1e9 and "peak_flops_per_s" not in cold     # this machine's peak, measured; not the sittings'
    assert "12000" in (tmp_path / "reports" / "smoke" / "REPORT.md").read_text()
    assert run.main(["--profile", "smoke", "--note", "again"]) == 0                 # a rerun does not file it twice
    entry = json.loads((tmp_path / "reports" / "smoke" / "timings.json").read_text())["06_zeroshot"]
    assert entry["runs"]["cold"] == cold and [h["mode"] for h in entry["history"]] == ["warm"]


def test_run_times_read_as_a_person_would():
    assert [run.duration(s) for s in (4, 83, 150, 599, 3600)] == ["4 s", "83 s", "2.5 min", "10.0 min", "60 min"]


def test_runner_reports_a_bad_parameter_in_one_line(tmp_path, monkeypatch, capsys):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "quick"\nseeds = [-1]', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from llgbm.notebook.params import check_params\ncheck_params(profile=profile, seeds=seeds)")],
        metadata={"kernelspec": {"name": "llgbm", "display_name": "LLGBM Lab", "language": "python"}})
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "00_params.ipynb")
    monkeypatch.setattr(run, "NOTEBOOKS", tmp_path / "nb")
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path / "reports"))
    assert run.main(["--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "FAILED in cell 3: ParameterError: parameter seeds=[-1]: expected None or a non-empty list" in err
    assert "check_params(profile" not in err and "Traceback" not in err            # no traceback for a bad parameter


def test_runner_rejects_unknown_notebook():
    with pytest.raises(SystemExit, match="unknown notebook"):
        run.notebooks(["99_nothing"])


def test_report_collects_metrics_tables_and_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path))
    rep = report.NotebookReport("00_baseline", "smoke")
    rep.log(a_metric=0.5, count=3, speed=0.8)
    rep.claim("X is faster", "seed 001", "refuted", "0.8x")
    with pytest.raises(ValueError, match=r"cites \['0.9', '7'\], which no metric"):
        rep.claim("X is faster", "seed 001", "refuted", "0.9x in 7 runs")      # numbers the run did not log
    with pytest.raises(ValueError, match="cites"):
        rep.note("9_verdict", "It took 12 s.")
    rep.note("1_caveat", "It took 12 s.")                                        # not a verdict: not checked
    with pytest.raises(TypeError, match="must be a number"):
        rep.log(bad="text")
    text = report.write_report("smoke", [Path(run.NOTEBOOKS) / "00_baseline.ipynb"]).read_text()
    assert "| a_metric | 0.5 |" in text and "| X is faster | seed 001 | **refuted** | 0.8x |" in text


def test_report_states_budget_verdicts_for_cold_and_warm_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path))
    assert report.SUITE_BUDGET_S["quick"] == 230 * 60                  # issue 27: no slower than the 24-task suite
    monkeypatch.setitem(report.SUITE_BUDGET_S, "quick", 60 * 60)       # round numbers for the arithmetic below
    nb = [Path(run.NOTEBOOKS) / "00_baseline.ipynb"]
    run.record_timing("quick", "00_baseline", 1200)        # no mode: a latest run, neither cold nor warm
    text = report.write_report("quick", nb).read_text()
    assert "Whole suite, cold: not timed for every notebook" in text and "| 00_baseline | 15 min | — | — | — | 1200 |" in text
    run.record_timing("quick", "00_baseline", 3900, mode="cold", note="tests ran beside it")
    run.record_timing("quick", "02_dataset", 30, mode="warm")
    text = report.write_report("quick", nb).read_text()
    assert ("the 1 timed add up to 65 min against 60 min, **over budget already** by 5 min; not timed cold: 02_dataset."
            in text) and "- 00_baseline, cold run: tests ran beside it" in text
    run.record_timing("quick", "00_baseline", 1800, mode="cold")
    run.record_timing("quick", "02_dataset", 300, mode="cold", peak=1.5e11)    # the peak the runner measured here
    assert json.loads((tmp_path / "quick" / "timings.json").read_text())["02_dataset"]["runs"]["cold"]["peak_flops_per_s"] == 1.5e11
    text = report.write_report("quick", nb).read_text()
    assert "- 00_baseline, cold run: tests ran beside it" not in text      # the note went with the run it described
    assert ("- 00_baseline, an earlier cold run (replaced by the one above): 3900 s, finished "        # … into its history
            in text) and text.count("an earlier cold run") == 1
    assert "| 00_baseline | 15 min | 1800 | **missed** by 15 min |" in text and "| 02_dataset | 10 min | 300 | met |" in text
    assert "Whole suite, cold: 35 min against 60 min: **within budget**" in text
    assert "Budgets (cold, quick): 00 ≤ 15 min; 04b ≤ 20 min; 06 ≤ 90 min; 10 ≤ 25 min; 11 ≤ 15 min; 12 ≤ 30 min" in text
    run.record_timing("quick", "00_baseline", 500, mode="warm")
    run.record_timing("quick", "02_dataset", 200, mode="warm")      # replaces its earlier warm run
    text = report.write_report("quick", nb).read_text()
    assert "Whole suite, warm: 12 min against 10 min: **over budget**" in text
    assert "| 00_baseline | 15 min | 1800 | **missed** by 15 min | 500 | 500 |" in text   # the cold run is kept
    assert "- Machines" not in text                                         # one machine: nothing to say
    t = json.loads((tmp_path / "quick" / "timings.json").read_text())
    (tmp_path / "quick" / "timings.json").write_text(json.dumps(run.file_timing(t, "02_dataset", dict(seconds=250.0, finished="x", machine="Other CPU, 8 CPUs"), "cold")))
    text = report.write_report("quick", nb).read_text()
    assert (f"- Machines (times from different CPUs compare only roughly): {run.machine()}: 00_baseline cold, 00_baseline warm, "
            "02_dataset warm; Other CPU, 8 CPUs: 02_dataset cold.") in text
    assert f"- 02_dataset, an earlier cold run (replaced by the one above): 300 s, finished " in text and f"; on {run.machine()}" in text
    run.record_timing("smoke", "00_baseline", 5, mode="cold")   # smoke has no budgets: no verdicts
    assert "budget**" not in report.write_report("smoke", nb).read_text()


def test_file_timing_keeps_the_runs_it_replaces():
    t = run.file_timing({}, "00_baseline", dict(seconds=10.0, finished="a"), "cold")
    assert "history" not in t["00_baseline"] and t["00_baseline"]["runs"]["cold"]["seconds"] == 10.0
    t = run.file_timing(t, "00_baseline", dict(seconds=5.0, finished="b"), "warm")     # another mode: nothing replaced
    assert "history" not in t["00_baseline"]
    t = run.file_timing(t, "00_baseline", dict(seconds=1.0, finished="c"))            # no mode: only the latest run
    assert t["00_baseline"]["seconds"] == 1.0 and t["00_baseline"]["runs"]["cold"]["seconds"] == 10.0
    for i in range(6):
        t = run.file_timing(t, "00_baseline", dict(seconds=20.0 + i, finished=str(i), note=f"run {i}"), "cold")
    h = t["00_baseline"]["history"]
    assert len(h) == run.HISTORY and [x["seconds"] for x in h] == [21.0, 22.0, 23.0, 24.0]    # the newest, oldest first
    assert h[-1] == dict(mode="cold", seconds=24.0, finished="4", note="run 4") and t["00_baseline"]["runs"]["cold"]["seconds"] == 25.0


def test_report_says_what_a_missed_cold_budget_would_take(tmp_path, monkeypatch):
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path))
    monkeypatch.setitem(report.SUITE_BUDGET_S, "quick", 60 * 60)       # round numbers for the arithmetic below
    nb = [Path(run.NOTEBOOKS) / "00_baseline.ipynb"]
    executed = tmp_path / "run.ipynb"
    executed.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["# title"], "metadata": {}},
        {"cell_type": "code", "source": ["x = 1\n", "y = 2"], "metadata": {"papermill": {"duration": 1.0}}},
        {"cell_type": "code", "source": ["zoo.build_zoo(model)"], "metadata": {"papermill": {"duration": 1500.0}}}]}))
    cells = run.cell_seconds(executed)
    assert [(c["cell"], c["code"]) for c in cells] == [(2, "zoo.build_zoo(model)"), (1, "x = 1")]
    run.record_timing("quick", "00_baseline", 1800, mode="cold", cells=cells)       # 15-min budget: needs 2.0×
    run.record_timing("quick", "13_inl", 3000, mode="cold")                          # 10-min budget: needs 5.0×
    run.record_timing("quick", "02_dataset", 60, mode="cold")                        # met: not listed
    (tmp_path / "quick").mkdir(exist_ok=True)
    (tmp_path / "quick" / "bench.json").write_text(json.dumps({"paths": [
        {"name": "slow path", "fraction of peak": 0.5, "useful fraction of peak": 0.25},    # padding counts: 0.25
        {"name": "fast path", "fraction of peak": 0.75, "useful fraction of peak": float("nan")}]}))
    text = report.write_report("quick", nb).read_text()
    assert "no notebook can gain more than 4.0× if every path reached the peak, or 3.0× if" in text
    assert ("- 00_baseline: missed by 15 min; it needs 2.0× less time. Its slowest cells: cell 2 `zoo.build_zoo(model)` "
            "1500 s (83%); cell 1 `x = 1` 1 s (0%). **Within the practical bound**") in text
    assert "- 13_inl: missed by 40 min; it needs 5.0× less time. Its cells were not recorded. **Beyond even the peak bound**" in text
    assert "02_dataset: missed" not in text
    assert "- The suite: the 3 notebooks timed cold need 1.4× less time together. **Within the practical bound**" in text
    run.record_timing("quick", "05_delta_only", 30, mode="warm")                     # not timed cold: no call on the suite
    text = report.write_report("quick", nb).read_text()
    assert ("need 1.4× less time together, and more with 05_delta_only, not timed cold yet. Whether the bounds cover it "
            "waits for the untimed notebooks.") in text


def test_notebooks_with_their_own_caches_are_filed_by_them(tmp_path, monkeypatch):
    """A geomlib notebook's rerun over its own cache is warm whatever the zoo holds; its first run cold."""
    monkeypatch.setenv("LLGBM_HOME", str(tmp_path))
    assert run.cache_files("02_dataset") is None                       # filed by the zoo's state
    empty = run.cache_files("13_inl")
    assert empty == frozenset() and run.own_mode(empty, frozenset({"inl/a"})) == "cold"
    (tmp_path / "inl" / "run").mkdir(parents=True)
    (tmp_path / "inl" / "run" / "checkpoint.safetensors").write_text("x")
    before = run.cache_files("13_inl")
    assert before == {"inl/run/checkpoint.safetensors"} and run.own_mode(before, run.cache_files("13_inl")) == "warm"
    (tmp_path / "inl" / "run" / "modes.json").write_text("{}")
    assert run.own_mode(before, run.cache_files("13_inl")) == "partial"
    assert set(run.OWN_CACHES) <= {nb.stem for nb in run.notebooks(None)}


def test_notebooks_without_own_caches_are_filed_by_the_artefacts_they_read(tmp_path, monkeypatch):
    """04 over 00's zoo and generator runs is cold when it trained its own runs; partial when it also
    read back one of its own; a notebook that trains nothing keeps the suite's mode."""
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path))

    def record(stem, rows):
        (tmp_path / "quick" / stem).mkdir(parents=True, exist_ok=True)
        (tmp_path / "quick" / stem / "artefacts.json").write_text(json.dumps(
            {k: dict(kind="x", trained=t) for k, t in rows.items()}))
    record("00_baseline", {"zoo/a": False, "generators/w0": True})
    record("04_multitask", {"zoo/a": False, "generators/w0": False, "generators/d0": True})
    assert run.artefact_mode("quick", "04_multitask", "warm") == "cold"
    record("04_multitask", {"zoo/a": False, "generators/d1": False, "generators/d0": True})
    assert run.artefact_mode("quick", "04_multitask", "warm") == "partial"
    record("04_multitask", {"zoo/a": False, "generators/d1": False})
    assert run.artefact_mode("quick", "04_multitask", "warm") == "warm"
    assert run.artefact_mode("quick", "02_dataset", "cold") == "cold"          # no record: the suite's mode
    record("00_baseline", {"zoo/a": True, "generators/w0": True})
    assert run.artefact_mode("quick", "00_baseline", "partial") == "cold"       # nothing earlier: all its own


def test_suite_mode_reads_the_cache_state():
    state = dict(state="cold", zoo_runs=0, zoo_planned=24, generator_runs=0, cached_deltas=48)
    assert run.suite_mode(state) == "cold"                  # the committed deltas do not make it warm
    assert run.suite_mode(dict(state, state="warm", zoo_runs=24, generator_runs=30)) == "warm"
    assert run.suite_mode(dict(state, state="warm", zoo_runs=24)) == "partial"
    assert run.suite_mode(dict(state, state="partial", zoo_runs=3, generator_runs=2)) == "partial"


def test_metrics_diff_finds_a_moved_number_and_sets_timings_apart(tmp_path):
    from llgbm.notebook import diff
    for side, acc, secs in (("a", 0.5, 10.0), ("b", 0.5 + 1e-12, 99.0)):
        (tmp_path / side / "00_baseline").mkdir(parents=True)
        (tmp_path / side / "00_baseline" / "metrics.json").write_text(json.dumps(
            dict(teacher_acc_mean=acc, generation_seconds=secs, n_tasks=24, nan_metric=float("nan"))))
    res = diff.diff_metrics(tmp_path / "a", tmp_path / "b")
    assert res["changed"] == [] and res["timing"] == [("00_baseline", "generation_seconds")] and res["compared"] == 3
    assert diff.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    (tmp_path / "b" / "00_baseline" / "metrics.json").write_text(json.dumps(dict(teacher_acc_mean=0.51, n_tasks=24)))
    res = diff.diff_metrics(tmp_path / "a", tmp_path / "b")
    assert res["changed"] == [("00_baseline", "teacher_acc_mean", 0.5, 0.51)]
    assert ("00_baseline", "nan_metric") in res["only_a"]
    assert diff.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1


def test_uncited_numbers_by_form_and_precision():
    m = dict(gap=0.30512, seconds=1500.0, params=48.9e6, ratio=0.13, items=512)
    assert report.uncited("gap 0.305 (30.5%), 25 min, 48.9M parameters, 87% fewer, 512 items, fig. 3 in table 2a, 95% CI", m) == []
    assert report.uncited("gap 0.306 over 500 items", m) == ["0.306", "500"]       # wrong at the precision written
    assert report.uncited("−0.305 and +0.31", m) == []                              # sign aside
    assert report.uncited("1,500 s, 1.5e+03 s", m) == []


def test_report_says_which_commit_each_section_came_from(tmp_path, monkeypatch):
    from llgbm.notebook import provenance
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path))
    rep = report.NotebookReport("02_dataset", "smoke")
    state = json.loads((rep.dir / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=run.REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert state["commit"] == head and isinstance(state["dirty"], bool)
    assert provenance.provenance_line("02_dataset", dict(commit=head, dirty=False)).endswith("modules) is unchanged since.")
    assert "**with uncommitted changes**" in provenance.provenance_line("02_dataset", dict(commit=head, dirty=True))
    assert "**may be older than the committed code**" in provenance.provenance_line("02_dataset", None)
    # a file the notebook runs changed between the run's commit and HEAD: named in the line
    monkeypatch.setattr(provenance, "_git", lambda *a: subprocess.CompletedProcess(a, 0, "llgbm/core/tasks.py\n", ""))
    line = provenance.provenance_line("02_dataset", dict(commit=head, dirty=False))
    assert "**older than the committed code**: 1 file(s)" in line and "`llgbm/core/tasks.py`" in line
    monkeypatch.setattr(provenance, "_git", lambda *a: subprocess.CompletedProcess(a, 128, "", "bad revision"))
    assert "not found in this checkout's history" in provenance.provenance_line("02_dataset", dict(commit="f" * 40, dirty=False))


def test_provenance_follows_the_notebooks_imports():
    from llgbm.notebook import provenance
    calabi = provenance.code_files("11_calabi")
    assert {"notebooks/11_calabi.ipynb", "geomlib/calabi/lab.py", "geomlib/calabi/__init__.py", "llgbm/eval/lm.py",
            "llgbm/__init__.py"} <= set(calabi)
    assert "llgbm/lab/generate.py" not in calabi and "geomlib/inl/lab.py" not in calabi     # not imported: not its code
    for stem in ("10_igbundle", "11_calabi", "12_coordinates", "13_inl"):    # geomlib's notebooks run no llgbm.lab code
        assert not [f for f in provenance.code_files(stem) if f.startswith("llgbm/lab/")], stem
    assert "llgbm/lab/suitelab.py" in provenance.code_files("06_zeroshot")
    assert "llgbm/notebook/report.py" in calabi                             # usage, provenance: the suite report's only
    assert not {"llgbm/notebook/usage.py", "llgbm/notebook/provenance.py"} & set(calabi)
    assert provenance._imports("from llgbm.core import tasks\nimport numpy\ndef f():\n    import geomlib.inl.lab") == {
        "llgbm", "llgbm.core", "llgbm.core.tasks", "geomlib", "geomlib.inl", "geomlib.inl.lab"}
