"""Issue 29's frontier in geomlib.calabi: the new methods in the grid (an infeasible allocation is a
NaN row, not a crash), recovery by distillation (only the factors move, the KL falls), the command
that writes a compressed-model folder, the memory probe, and the ledger rows computed from numbers."""
import numpy as np
import pandas as pd
import pytest
import torch

from geomlib.calabi import __main__ as calabi_cli
from geomlib.calabi import allocate, lab, ledger, recover, store, svd
from llgbm.core import cli
from llgbm.eval import lm


@pytest.fixture
def tiny_calib(lab_home):
    from llgbm.core.models import load_model
    cfg = lab.CalabiConfig.preset("smoke", min_features=32)
    dense, tok = load_model("tiny", device="cpu")
    calib, evals = (lm.pydoc_windows(tok, split, 4, cfg.window) for split in ("calib", "eval"))
    return cfg, dense, tok, calib, evals, lab.calibrate(dense, calib)


def test_the_cli_knows_every_method_of_the_lab():
    assert calabi_cli.ALL_METHODS == lab.ALL_METHODS and set(svd.METHODS) < set(lab.ALL_METHODS)


def test_new_methods_fill_the_grid_and_an_infeasible_allocation_is_a_nan_row(tiny_calib, monkeypatch):
    cfg, dense, tok, calib, evals, stats = tiny_calib
    params = svd.OptimizedCYModelUtils.count_parameters(dense)
    every = {(m, n): allocate.max_saving_rank(m, n) for m in (32, 64, 128) for n in (32, 64, 128)}
    monkeypatch.setattr(lab, "fast_ranks", lambda name, cfg: every)            # every shape fast: a machine-free test
    res = lab.compression_grid("tiny", stats, evals, cfg, params, methods=("asvd", "asvd+update", "svdllm+alloc"), progress=False)
    by = res.set_index(["method", "ratio"])
    assert (by.loc["asvd+update"].params.values == by.loc["asvd"].params.values).all()      # the update changes values, not sizes
    alloc = by.loc["svdllm+alloc"]
    assert ((alloc.removed >= np.array(cfg.ratios) - 0.02) & np.isfinite(alloc.ppl)).all()  # the budget met (biases aside)
    monkeypatch.setattr(lab, "fast_ranks", lambda name, cfg: {})               # nothing is faster factorised here
    res = lab.compression_grid("tiny", stats, evals, cfg, params, methods=("svdllm+alloc",), progress=False)
    assert res.ppl.isna().all() and (res.layers == 0).all()
    assert ledger.best_at_20(pd.concat([res, by.reset_index()]), lab.ALL_METHODS).method != "svdllm+alloc"
    with pytest.raises(ValueError, match="unknown compression method 'svd'; expected one of"):
        lab.compressed("tiny", 0.2, "svd", stats, cfg)


def test_distillation_moves_only_the_factors_and_lowers_the_kl(tiny_calib):
    cfg, dense, tok, calib, evals, stats = tiny_calib
    model, _ = lab.compressed("tiny", 0.4, "svdllm", stats, cfg)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".U" not in n and ".S" not in n and ".V" not in n
              and not any(n == f"{k}.bias" for k, m in model.named_modules() if isinstance(m, svd.OptimizedCalabiYauLinear))}
    rows = recover.distill(model, dense, calib, (0, 5, 30), lambda m: dict(ppl=lm.perplexity(m, evals)[0]), lr=3e-3, batch=2, progress=False)
    assert [r["step"] for r in rows] == [0, 5, 30] and np.isnan(rows[0]["kl"])
    assert rows[2]["kl"] < rows[1]["kl"]                                         # the later steps fit better
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no OptimizedCalabiYauLinear"):
        recover.distill(dense, dense, calib, (0, 1), lambda m: {}, progress=False)


def test_compress_command_writes_a_folder_that_reloads_and_refuses_what_it_cannot_do(lab_home, tmp_path, capsys):
    out = tmp_path / "tiny-svdllm"
    assert cli.run(calabi_cli.main, ["compress", "--model", "tiny", "--ratio", "0.3", "--method", "svdllm", "--min-features", "32",
                                     "--calib-windows", "2", "--out", str(out)]) == 0
    assert "saved to" in capsys.readouterr().out
    model = store.load_compressed(out)
    assert any(isinstance(m, svd.OptimizedCalabiYauLinear) for m in model.modules())
    rss = recover.rss_mb(str(out))
    assert rss["after"] > 0 and rss["peak"] >= rss["after"] * 0.5
    for argv, message in ((["--method", "svdllm"], "add --out FOLDER"), (["--out", str(out)], "exists already"),
                          (["--model", "minilm", "--out", str(tmp_path / "m")], "minilm is an encoder")):
        args = ["compress", "--model", "tiny", "--ratio", "0.3", *argv]
        assert cli.run(calabi_cli.main, args) == 2
        assert message in capsys.readouterr().err


def _study(em_front, speed=(300.0, 290.0, 310.0)):
    sm = pd.DataFrame({"dense": dict(median=280.0, min=270.0, max=285.0, params=1000, rss_after_mb=500.0, rss_peak_mb=900.0),
                       "svdllm+alloc 20%": dict(median=speed[0], min=speed[1], max=speed[2], params=850, rss_after_mb=420.0,
                                                rss_peak_mb=800.0)}).T
    dense = np.array([1.0, 0.0] * 64)
    corpora = pd.DataFrame(dict(stdlib_docstrings_ratio=[1.0, 1.5], stdlib_docstrings=[30.0, 45.0]),
                           index=["dense", "svdllm+alloc 20% recovered"])
    return dict(curve=pd.DataFrame(dict(step=[0, 40], kl=[np.nan, 0.1], ppl=[40.0, 32.0])), sm=sm, names=["a", "b"],
                em={"dense": dense, "svdllm+alloc 20% recovered": em_front}, recovered="svdllm+alloc 20% recovered", corpora=corpora)


def test_frontier_rows_are_computed_from_the_numbers():
    front = pd.Series(dict(method="svdllm+alloc", ratio=0.2, ppl=40.0, removed=0.2, layers=150))
    dense = np.array([1.0, 0.0] * 64)
    same = _study(dense.copy())
    m = ledger.frontier_metrics(front, same, ppl_dense=25.0, n_boot=200)
    assert m["front_recovered_ppl_ratio_20"] == pytest.approx(32 / 25) and m["front_removed_all_params"] == pytest.approx(0.15)
    rows = {r[0].split()[1 if r[0].startswith("≤") else 0]: r for r in ledger.frontier_claims(m, front, same["recovered"])}
    assert rows["1.30×"][2] == "met" and "1.60× before recovery, 1.28× after 40" in rows["1.30×"][3] and "docstrings) 1.50×" in rows["1.30×"][3]
    assert rows["Factored"][2] == "met" and "beyond the repeats' spread" in rows["Factored"][3]
    assert rows["Task"][2] == "met"
    worse = _study(np.zeros(128), speed=(270.0, 260.0, 290.0))          # every answer lost; slower within noise
    m = ledger.frontier_metrics(front, worse, ppl_dense=20.0, n_boot=200)
    rows = {r[0].split()[1 if r[0].startswith("≤") else 0]: r for r in ledger.frontier_claims(m, front, worse["recovered"])}
    assert [rows[k][2] for k in ("1.30×", "Factored", "Task")] == ["not met", "not met", "not met"]
    assert "within the repeats' spread" in rows["Factored"][3]
    assert "outside the 1.30× target" in ledger.frontier_verdict(m, front, worse["recovered"])
    table = ledger.task_table(worse["names"], worse["em"])
    assert table.loc["all (128 items)", "dense"] == 0.5 and table.loc["a", "svdllm+alloc 20% recovered"] == 0.0


def test_the_second_corpus_is_real_prose_apart_from_the_pydoc_topics(real_home):
    from pydoc_data.topics import topics

    from llgbm.core.models import load_tokenizer
    docs = lm.stdlib_docstrings()
    assert len(docs) > 50 and all(len(d) >= 200 for d in docs)
    assert any(d.startswith("Thread-local objects.") for d in docs)                 # _threading_local's docstring
    assert not any("test" in d[:40].lower() and "regression" in d[:80].lower() for d in docs)   # tests left out
    pydoc = "\n".join(topics.values())
    assert sum(d[:200] in pydoc for d in docs) < len(docs) // 10                      # a different text, not the same one
    tok = load_tokenizer("smollm2")
    w = lm.docstring_windows(tok, 8, 64)
    assert w.shape == (8, 64) and torch.equal(w, lm.docstring_windows(tok, 8, 64))   # deterministic
    with pytest.raises(ValueError, match="fewer than 100000 windows"):
        lm.docstring_windows(tok, 100000, 64)


def test_each_lever_is_judged_against_the_method_it_builds_on():
    m = dict(ppl_dense=20.0, eval_tokens=4096.0, ppl_svdllm_20=60.0, ppl_svdllm_alloc_20=105.0, ppl_svdllm_alloc_type_20=58.0,
             ppl_asvd_20=1950.0, ppl_asvd_update_20=170.0)
    rows = ledger.lever_claims(m)
    assert [r[2] for r in rows] == ["refuted", "inconclusive (within 5%)", "not measured", "supported"]
    assert "svdllm+alloc perplexity 105.00 (5.25× dense) vs svdllm 60.00 (3.00×)" in rows[0][3]
    del m["ppl_svdllm_alloc_20"]                                        # an infeasible budget: no cell
    assert ledger.lever_claims(m)[0][2] == "not measured"
    front = pd.Series(dict(method="svdllm+alloc", ratio=0.2, ppl=58.0, removed=0.2, layers=210))
    m |= ledger.frontier_metrics(front, _study(np.array([1.0, 0.0] * 64)) | dict(recovered="svdllm+alloc 20% recovered"),
                                 ppl_dense=20.0, n_boot=100)
    text = ledger.frontier_verdict(m, front, "svdllm+alloc 20% recovered")
    assert text.startswith("Issue 29's levers at 20%: svdllm+alloc-type 2.90× against svdllm 3.00×; asvd+update 8.50× against asvd")
    assert "The frontier, the lowest perplexity of all methods at 20%, is svdllm+alloc: 2.90× dense" in text


def test_every_number_of_the_rows_and_the_verdict_is_a_logged_metric():
    from llgbm.notebook.cite import uncited
    methods = lab.ALL_METHODS
    res = pd.DataFrame(dict(method=[m for m in methods for _ in (0.2, 0.4)], ratio=[0.2, 0.4] * len(methods),
                            ppl=[30.0 + 7 * i for i in range(2 * len(methods))], params=[8e7, 6e7] * len(methods),
                            tokens_per_s=[300.0] * 2 * len(methods), layers=[210] * 2 * len(methods)))
    res["removed"] = 1 - res.params / 1e8
    best, front = ledger.best_at_20(res), ledger.best_at_20(res, lab.ALL_METHODS)
    mini = pd.DataFrame(dict(method=["plain", "svdllm"], ratio=[0.2, 0.2], mean_cosine=[0.8, 0.95]))
    timed = list(dict.fromkeys(["dense", best.method, "asvd", "svdllm"]))
    speed = pd.DataFrame(dict(median=100.0 + np.arange(len(timed)), min=90.0 + np.arange(len(timed)), max=110.0 + np.arange(len(timed)),
                              repeats=7, spread=0.2), index=timed)
    m = ledger.metrics(res, best, mini, ppl_dense=20.0, tps_dense=100.0, params_dense=10**8, ppl_ft=25.0, ft_steps=20,
                       eval_tokens=4096, calib_tokens=6144, speed=speed)
    study = _study(np.array([1.0, 0.0] * 64))
    study["sm"] = study["sm"].rename(index={"svdllm+alloc 20%": f"{front.method} 20%"})
    study["corpora"] = study["corpora"].rename(index={"svdllm+alloc 20% recovered": f"{front.method} 20% recovered"})
    study["em"] = {"dense": study["em"]["dense"], f"{front.method} 20% recovered": study["em"]["svdllm+alloc 20% recovered"]}
    m |= ledger.frontier_metrics(front, study | dict(recovered=f"{front.method} 20% recovered"), ppl_dense=20.0, n_boot=100)
    recovered = f"{front.method} 20% recovered"
    for claim, _, verdict, evidence in ledger.claims(m, best) + ledger.frontier_claims(m, front, recovered):
        assert uncited(verdict + " " + evidence, m) == [], claim
    assert uncited(ledger.verdict(m, best) + " " + ledger.frontier_verdict(m, front, recovered), m) == []
