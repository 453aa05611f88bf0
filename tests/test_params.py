"""Notebook parameters: a bad value stops a notebook at once with an error that names the parameter
and what is allowed."""
import pytest

from llgbm.notebook.params import ParameterError, check_params


@pytest.mark.parametrize("params, message", [
    (dict(profile="bogus"), "parameter profile='bogus': expected one of smoke, quick, full"),
    (dict(eval_items=-3), "parameter eval_items=-3: expected an integer ≥ 1 or None"),
    (dict(n_timing=0), "parameter n_timing=0"),
    (dict(seed=-1), "parameter seed=-1: expected an integer ≥ 0"),
    (dict(seeds=[0, "one"]), "parameter seeds"),
    (dict(objectives=["weight", "behaviour"]), "unknown value(s) of parameter objectives ['behaviour']; known: sft, cd, weight, multitask, delta"),
    (dict(tasks=["add_1", "no_such_task"]), "unknown value(s) of parameter tasks ['no_such_task']"),
    (dict(ratios=[0.2, 1.5]), "parameter ratios"),
    (dict(epochs=3), "unknown parameter 'epochs'"),
])
def test_bad_values_name_the_parameter_and_the_allowed_values(params, message):
    with pytest.raises(ParameterError) as err:
        check_params(**params)
    assert message in str(err.value)


def test_good_values_pass_unchanged():
    good = dict(profile="smoke", model_name=None, eval_items=None, n_timing=3, seed=0, seeds=[0, 1],
                objectives=["weight", "delta"], tasks=["add_1"], ratios=[0.2, 0.4], steps_factor=2, ft_steps=0)
    assert check_params(**good) == good
    assert check_params(objectives=["sft", "cd"]) == dict(objectives=["sft", "cd"])     # 06's, without loading the generator


@pytest.mark.notebook
def test_papermill_with_a_bad_profile_stops_in_the_check_cell(tmp_path, monkeypatch, real_home):
    import papermill as pm

    from llgbm.notebook import run
    monkeypatch.setenv("LLGBM_REPORTS", str(tmp_path / "reports"))
    with pytest.raises(pm.PapermillExecutionError) as err:
        run.run_notebook(run.NOTEBOOKS / "02_dataset.ipynb", "bogus", timeout=120)
    assert err.value.ename == "ParameterError"
    assert "parameter profile='bogus': expected one of smoke, quick, full" in err.value.evalue
