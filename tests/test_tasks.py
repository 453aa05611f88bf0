import pytest

from llgbm.core import tasks
from llgbm.delta.probes import create_domain_probes, create_generic_probes


def test_suite_size_and_families():
    assert len(tasks.BUILTIN_TASKS) >= 24
    assert len(tasks.families()) >= 4
    for fam in tasks.families():
        if fam == "custom":
            continue
        names = tasks.list_tasks(family=fam)
        assert tasks.list_tasks(family=fam, heldout=True), f"family {fam} has no held-out task"
        assert tasks.list_tasks(family=fam, heldout=False), f"family {fam} has no training task"
        assert len(names) >= 2


@pytest.mark.parametrize("name", tasks.BUILTIN_TASKS)
def test_splits_are_deterministic_disjoint_and_scorable(name):
    t = tasks.get_task(name)
    tasks._build.cache_clear()
    again = tasks.get_task(name)
    assert t.train == again.train and t.test == again.test
    assert not {x for x, _ in t.train} & {x for x, _ in t.test}
    assert len(t.test) >= 40 and len(t.train) >= 40
    x, y = t.test[0]
    assert t.score(f" {y} ", y) and not t.score(y + "x", y)
    assert t.prompt(x).endswith("Output:") and t.target(y) == f" {y}\n"


def test_heldout_split_is_the_documented_one():
    assert set(tasks.list_tasks(heldout=True)) == {
        "country_en_to_it", "country_en_to_nl", "alpha3_to_country", "alpha2_to_language",
        "number_words_it", "number_words_pt", "add_3", "caesar_2"}
    assert not set(tasks.list_tasks(heldout=True)) & set(tasks.list_tasks(heldout=False))


def test_real_data_is_real():
    assert ("Germany", "Deutschland") in tasks.get_task("country_en_to_de").train + tasks.get_task("country_en_to_de").test
    assert dict(tasks.get_task("number_words_fr").test + tasks.get_task("number_words_fr").train)["73"] == "soixante-treize"
    assert dict(tasks.get_task("caesar_3").test)["e w g j"] == "h z j m"


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(KeyError, match="country_en_to_de") as err:
        tasks.get_task("no_such_task")
    assert "unknown task 'no_such_task'" in str(err.value)


def test_user_registered_task():
    pairs = [(f"{i}", f"{i * 2}") for i in range(60)]
    t = tasks.register_task("double_it", "Double the number.", pairs, family="custom", overwrite=True)
    assert "double_it" in tasks.list_tasks(family="custom")
    assert len(t.train) + len(t.test) == 60 and dict(t.test)[t.test[0][0]] == str(int(t.test[0][0]) * 2)
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task("double_it", "Double the number.", pairs)
    with pytest.raises(ValueError, match="one non-empty line"):
        tasks.register_task("bad_task", "x", [("a\nb", "c")] * 5, overwrite=True)
    # a task that cannot be built is not left registered
    assert "bad_task" not in tasks.list_tasks()
    with pytest.raises(KeyError, match="unknown task 'bad_task'"):
        tasks.get_task("bad_task")


@pytest.mark.parametrize("pairs, message", [
    ([("1", None)] + [(str(i), str(i)) for i in range(2, 8)], r"item 0 is \('1', None\).*None is not an answer"),
    ([(object(), "x")] + [(str(i), str(i)) for i in range(2, 8)], "inputs and answers must be strings"),
    ([(1, 2)] + [(str(i), str(i)) for i in range(2, 8)], r"write str\(value\) for numbers"),
    ([("a", "1"), ("a", "999")] + [(str(i), str(i)) for i in range(2, 8)], r"1 input\(s\) have two or more different answers \('a' -> \['1', '999'\]\)"),
    ([("a", "b", "c")] * 5, r"item 0 is \('a', 'b', 'c'\); each item must be an \(input, answer\) pair"),
    (["ab"] * 5, "item 0 is 'ab'"),
    ([("a", "1")] * 5 + [("b", "2")], r"at least 4 distinct examples, got 2 \(6 given, 4 exact duplicate\(s\) collapsed\)"),
])
def test_register_task_refuses_bad_data_naming_it(pairs, message):
    with pytest.raises(ValueError, match=message):
        tasks.register_task("bad_data", "Echo.", pairs, overwrite=True)
    assert "bad_data" not in tasks.list_tasks()


def test_register_task_collapses_exact_duplicates_and_needs_an_instruction():
    pairs = [(str(i), str(i + 1)) for i in range(8)]
    t = tasks.register_task("dup_ok", "Add one.", pairs + pairs[:3], overwrite=True)
    assert len(t.train) + len(t.test) == 8
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        tasks.register_task("no_instruction", "  ", pairs)
    # the built-in sources keep their rule: an input with two answers is dropped, not an error
    assert tasks.get_task("country_to_alpha2").test and not tasks._REGISTRY["country_to_alpha2"].strict


def test_probes():
    generic = create_generic_probes()
    assert len(generic) == 5 and len(set(generic)) == 5
    domain = create_domain_probes("transforms", n=6)
    assert len(domain) == 6
    heldout_inputs = {t.prompt(x) for n in tasks.list_tasks(heldout=True) for t in [tasks.get_task(n)] for x, _ in t.test}
    assert not set(domain) & heldout_inputs
    assert len({p.split("\n")[0] for p in domain}) > 1  # interleaved across the family's tasks
    with pytest.raises(KeyError, match="unknown task"):
        create_domain_probes("astrology")
