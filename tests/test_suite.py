"""The large task suite (llgbm.core.suite): size, types, splits, near/far held-out tasks, real values."""
import datetime
import unicodedata
from collections import Counter
from decimal import Decimal

import numpy as np
import pytest

from llgbm.core import suite, tasks

LARGE = tasks.list_tasks(suite="large")


def test_size_types_and_the_classic_suite_kept_apart():
    kinds = Counter(tasks.get_task(n).family for n in LARGE)
    assert len(LARGE) >= 200 and len(kinds) >= 12
    assert set(tasks.BUILTIN_TASKS) <= set(LARGE)
    added = set(LARGE) - set(tasks.BUILTIN_TASKS)
    assert set(tasks.BUILTIN_TASKS) <= set(tasks.list_tasks()) and not added & set(tasks.list_tasks())   # default unchanged
    large_types = {tasks.get_task(n).family for n in added} - {"country_names", "iso_codes", "number_words", "transforms"}
    assert not large_types & set(tasks.families())
    assert len(tasks.list_tasks(suite=None)) >= len(LARGE)


def test_near_and_far_heldout_tasks():
    near, far = tasks.list_tasks(suite="large", transfer="near"), tasks.list_tasks(suite="large", transfer="far")
    trained = {tasks.get_task(n).family for n in tasks.list_tasks(suite="large", heldout=False)}
    far_types = {tasks.get_task(n).family for n in far}
    assert far_types == set(suite.FAR_TYPES) and not far_types & trained     # whole types never trained on
    assert {tasks.get_task(n).family for n in near} <= trained               # new tasks of seen types
    assert set(suite.NEAR) <= set(near)
    assert set(tasks.list_tasks(suite="large", heldout=True)) == set(near) | set(far)
    for group in (near, far):
        assert sum(len(tasks.get_task(n).test) for n in group) >= 512


@pytest.mark.parametrize("name", [n for n in LARGE if n not in tasks.BUILTIN_TASKS])
def test_every_task_is_well_formed(name):
    t = tasks.get_task(name)
    assert t.instruction and t.suite == "large" and t.family
    inputs = [x for x, _ in t.train + t.dev + t.test]
    assert len(inputs) == len(set(inputs)) >= suite.MIN_ITEMS          # disjoint splits, one answer per input
    assert len(t.test) >= 24 and len(t.dev) >= 6 and t.train
    assert max(len(y) for _, y in t.train + t.dev + t.test) <= suite.MAX_ANSWER
    x, y = t.dev[0]
    assert t.score(f" {y}\n", y) and not t.score(y + "x", y) and t.split("dev") == t.dev


def test_splits_are_deterministic():
    for name in ("territory_names_de", "arithmetic_add_7", "weekday_fr", "subdivision_names_US"):
        t = tasks.get_task(name)
        tasks._build.cache_clear()
        assert tasks.get_task(name) == t


def _pairs(name):
    t = tasks.get_task(name)
    return dict(t.train + t.dev + t.test)


def test_real_values_per_source():
    assert _pairs("territory_names_de")["Iraq"] == "Irak"                            # babel CLDR names
    assert dict(suite.language_names("fr"))["German"] == "allemand"                 # (a split holds ≤ 532 items)
    assert dict(suite.currency_names("de"))["JPY"] == "Japanischer Yen"
    assert _pairs("country_currency")["Japan"] == "JPY" and _pairs("country_language")["Brazil"] == "Portuguese"
    assert _pairs("iso_country_to_numeric")["Germany"] == "276"                      # pycountry
    assert _pairs("subdivision_names_US")["US-NY"] == "New York"
    week = _pairs("weekday_en")                                                      # checked against datetime
    assert all(datetime.date.fromisoformat(d).strftime("%A") == w for d, w in week.items())
    assert all(v == "many" for k, v in _pairs("plural_category_pl").items() if k in ("5", "11", "25"))
    assert _pairs("plural_category_pl").get("22", "few") == "few"
    assert all(unicodedata.lookup(n) == c for c, n in _pairs("unicode_names_greek").items())
    assert suite.to_roman(1994) == "MCMXCIV" and suite.to_roman(3999) == "MMMCMXCIX"
    assert all(int(b, 2) == int(d) for b, d in _pairs("base_from_binary").items())
    assert all(suite._shift(c, 13) == r for c, r in _pairs("cipher_caesar_13").items())
    assert _pairs("transliteration_cs").get("čeština", "cestina") == "cestina"
    assert all(Decimal(d.replace(".", "").replace(",", ".")) == Decimal(x) for x, d in _pairs("number_format_de").items())
    assert _pairs("date_long_pl").get("1988-05-19", "19 maja 1988") == "19 maja 1988"


def test_ambiguous_inputs_are_dropped():
    assert tasks.unambiguous([("a", "1"), ("a", "2"), ("b", "3"), ("b", "3")]) == [("b", "3")]


def test_bad_names_get_clear_errors():
    with pytest.raises(ValueError, match="unknown suite 'big'"):
        tasks.list_tasks(suite="big")
    with pytest.raises(KeyError, match="territory_names_de"):
        tasks.get_task("territory_names_dee")
    with pytest.raises(ValueError, match="needs heldout=True"):
        tasks.register_task("x_far", "Echo.", [(str(i), str(i)) for i in range(8)], transfer="far")
    with pytest.raises(ValueError, match="unknown suite"):
        tasks.register_task("x_suite", "Echo.", [(str(i), str(i)) for i in range(8)], suite="other")


def test_type_table_counts_every_task():
    rows = suite.table()
    assert sum(r["tasks"] for r in rows) == len(LARGE)
    assert sum(r["far"] for r in rows) == len(tasks.list_tasks(suite="large", transfer="far"))


# ------------------------------------------------------------------ the plan: which tasks a profile runs

def test_plan_subsets_are_nested_and_type_balanced():
    from llgbm.lab.suiteplan import SuitePlan
    full, plan = SuitePlan.preset("full"), SuitePlan.preset("quick")
    assert plan.train_sizes == (16, 64, None) and full.train_sizes == (16, 32, 64, 128, None)   # 06's compute plan
    subsets = [full.training(s) for s in full.train_sizes]
    assert [len(s) for s in subsets[:-1]] == [16, 32, 64, 128]
    assert len(subsets[-1]) == len(tasks.list_tasks(suite="large", heldout=False))
    assert all(set(a) < set(b) for a, b in zip(subsets, subsets[1:]))                       # nested
    counts = Counter(tasks.get_task(n).family for n in subsets[0])
    assert len(counts) == 16 and max(counts.values()) == 1                                  # one per type at 16
    assert not {tasks.get_task(n).family for n in plan.heldout("far")} & {tasks.get_task(n).family for n in subsets[-1]}
    for transfer in ("near", "far"):
        chosen = plan.heldout(transfer)
        assert plan.items(transfer) >= 512 and all(len(tasks.get_task(n).test) >= 64 for n in chosen)
        assert set(chosen) <= set(tasks.list_tasks(suite="large", transfer=transfer))
    assert len({tasks.get_task(n).family for n in plan.heldout("far")}) == 3
    assert SuitePlan.preset("quick", seed=1).training(16) != subsets[0]                     # the seed orders within types
    assert len(full.heldout("far")) >= len(plan.heldout("far"))
    assert {r["part"] for r in plan.table()} == {"held out, near", "held out, far", "training"}


def test_plan_refuses_bad_settings():
    from llgbm.lab.suiteplan import SuitePlan
    with pytest.raises(ValueError, match="increasing"):
        SuitePlan(train_sizes=(32, 16))
    with pytest.raises(ValueError, match="the large suite has"):
        SuitePlan().training(10_000)
    with pytest.raises(ValueError, match="unknown transfer"):
        SuitePlan().heldout("middle")


def test_scored_items_put_test_first_then_dev():
    big, classic = tasks.get_task("territory_names_de"), tasks.get_task("add_1")
    assert big.items(64, 16) == big.test[:64] + big.dev[:16]                 # its own dev split
    assert classic.items(64, 16) == classic.test[:80]                        # the tail of test, as before
    assert big.items(10) == big.test[:10] and big.items() == big.test
    with pytest.raises(ValueError, match="dev items for the 40 asked"):
        classic.items(90, 40)
    with pytest.raises(ValueError, match="test items, n_test=200"):
        big.items(200, 4)
    from llgbm.generator.train import TrainingConfig
    for profile in ("smoke", "quick", "full"):                               # every profile's dev items exist
        cfg = TrainingConfig.preset(profile)
        assert len(classic.items(cfg.eval_items, cfg.dev_items)) == cfg.eval_items + cfg.dev_items


def test_suite_table_and_cached_base_accuracy(tiny, lab_home):
    from llgbm.lab.suiteplan import base_accuracy, suite_table
    model, tok = tiny
    names = ["territory_names_de", "territory_names_ca", "weekday_fr", "arithmetic_add_7"]
    acc = base_accuracy(model, tok, "tiny-fp", names, 2, progress=False)
    assert set(acc) == set(names) and all(0 <= v <= 1 for v in acc.values())
    assert len(list((lab_home / "suite").glob("base-accuracy-*.json"))) == len(names)         # one file per task
    assert base_accuracy(model, tok, "tiny-fp", names, 2, progress=False) == acc           # read back
    table = suite_table(acc, {"territory_names_de": 0.5})
    assert table.loc["territory_names", "tasks"] == 2 and table.loc["territory_names", "near"] == 1
    assert table.loc["weekday", "far"] == 1 and table.loc["territory_names", "teachers"] == 1
    assert table.loc["territory_names", "teacher_exact_match"] == 0.5
    assert np.isnan(table.loc["arithmetic", "teacher_exact_match"])
