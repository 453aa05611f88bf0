"""Checking a notebook's parameters (the cell papermill injects): each known name has a rule, and a
bad value stops the notebook at once with an error that names the parameter and what is allowed,
rather than a KeyError deep in a later cell."""
from __future__ import annotations

from numbers import Integral, Real

from llgbm.core.tasks import list_tasks
from llgbm.core.utils import PROFILES, check_known
from llgbm.generator.objectives import ALL_OBJECTIVES


class ParameterError(ValueError):
    pass


def _positive_int(name, v, allow_none=True, minimum=1):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, Integral) or v < minimum:
        raise ParameterError(f"parameter {name}={v!r}: expected an integer ≥ {minimum}" + (" or None" if allow_none else ""))


def _ratios(name, v):
    if v is None:
        return
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(r, Real) and 0 < r < 1 for r in v):
        raise ParameterError(f"parameter {name}={v!r}: expected None or a non-empty list of fractions in (0, 1)")


def _subset(name, v, allowed, allow_none=False):
    if v is None and allow_none:
        return
    values = [v] if isinstance(v, str) else v
    if not isinstance(values, (list, tuple)) or not values:
        raise ParameterError(f"parameter {name}={v!r}: expected a non-empty list drawn from {', '.join(map(str, allowed))}")
    check_known(values, allowed, f"value(s) of parameter {name}", error=ParameterError)


def check_params(**params) -> dict:
    """Validate notebook parameters by name; returns them unchanged. Unknown names are an error too,
    so a misspelt `-p` on the papermill command line is caught."""
    for name, v in params.items():
        if name == "profile":
            if v not in PROFILES:
                raise ParameterError(f"parameter profile={v!r}: expected one of {', '.join(PROFILES)}")
        elif name == "model_name":
            if v is not None and (not isinstance(v, str) or not v):
                raise ParameterError(f"parameter model_name={v!r}: expected None, a preset ('smollm2', 'tiny') "
                                     f"or a local Hugging Face folder")
        elif name in ("eval_items", "n_timing", "prompts_per_item", "calib_windows", "eval_windows", "steps",
                      "bench_repeats", "weight_steps", "lm_steps"):
            _positive_int(name, v)
        elif name in ("seed",):
            _positive_int(name, v, allow_none=False, minimum=0)
        elif name in ("ft_steps",):
            _positive_int(name, v, minimum=0)
        elif name == "steps_factor":
            _positive_int(name, v, allow_none=False)
        elif name == "seeds":
            if v is not None and (not isinstance(v, (list, tuple)) or not v or
                                  not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in v)):
                raise ParameterError(f"parameter seeds={v!r}: expected None or a non-empty list of integers ≥ 0")
        elif name == "objectives":
            _subset(name, v, list(ALL_OBJECTIVES), allow_none=True)
        elif name == "tasks":
            if any(t not in list_tasks(suite=None) for t in ([v] if isinstance(v, str) else v or [])):
                list_tasks(suite="large")          # the name of a large-suite task registers that suite
            _subset(name, v, list_tasks(suite=None), allow_none=True)
        elif name == "ratios":
            _ratios(name, v)
        elif name == "recover_steps":
            if v is not None and (not isinstance(v, (list, tuple)) or not v or
                                  not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in v)):
                raise ParameterError(f"parameter recover_steps={v!r}: expected None or a non-empty list of step counts ≥ 0, "
                                     f"e.g. [0, 10, 20, 40]")
        else:
            raise ParameterError(f"unknown parameter {name!r}; this lab's notebooks take: profile, model_name, eval_items, "
                                 f"n_timing, prompts_per_item, seed, seeds, steps_factor, objectives, tasks, ratios, "
                                 f"calib_windows, eval_windows, ft_steps, recover_steps, steps, bench_repeats, weight_steps, lm_steps")
    return params
