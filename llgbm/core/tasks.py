"""The task suite: short instruction-following text tasks built from real offline data
(pycountry's ISO tables and gettext catalogues, num2words) and procedural transforms.

Every task has a deterministic train/dev/test split, an exact-match scorer, a type label (`family`),
a suite, and a flag that marks it held out: held-out tasks are never used to train a generator and
serve zero-shot evaluation. Two suites: "classic" (the first 34 tasks, whose splits the reports of
00-06 were computed on: no dev split of their own, the lab takes dev items from the tail of test) and
"large" (`llgbm.core.suite`: hundreds of tasks in many types, with near and far held-out tasks and a
dev split per task)."""
from __future__ import annotations

import difflib
import gettext
import random
import string
import zlib
from collections import abc
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

SPLIT_SEED = 0          # changing it changes every split: keep it fixed across the lab
MAX_TEST = 100          # test items per task (fewer when the source is small)
MAX_TRAIN = 400
MAX_DEV = 32            # dev items per task of the large suite: for choices, never for headline numbers
SUITES = ("classic", "large")
TRANSFERS = ("near", "far")  # a held-out task of a type seen in training, or of a type never seen

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    instruction: str
    train: Pairs
    test: Pairs
    heldout: bool = False
    dev: Pairs = ()
    suite: str = "classic"
    transfer: str = ""      # "near" or "far" for a held-out task of the large suite

    def prompt(self, x: str) -> str:
        return f"{self.instruction}\nInput: {x}\nOutput:"

    @staticmethod
    def target(y: str) -> str:
        # The newline teaches the adapter to stop; generation is cut at the first newline.
        return f" {y}\n"

    @staticmethod
    def score(prediction: str, gold: str) -> bool:
        """Exact match after trimming surrounding whitespace (case and accents count)."""
        return prediction.strip() == gold.strip()

    def prompts(self, split: str = "train") -> list[str]:
        """The task's unlabeled prompts: what a generator is conditioned on."""
        return [self.prompt(x) for x, _ in self.split(split)]

    def items(self, n_test: int | None = None, n_dev: int = 0) -> Pairs:
        """The items a lab scores: the first `n_test` test items (all when None), then `n_dev` dev items
        from the task's dev split. A classic task has no dev split: its dev items are the test split's
        next ones, after the `n_test` (as the reports of 00-06 took them). Too few items is an error."""
        if not n_dev:
            return self.test[:n_test]
        if n_test is None or len(self.test) < n_test:
            raise ValueError(f"task {self.name!r}: dev items follow exactly n_test test items; it has {len(self.test)} "
                             f"test items, n_test={n_test}")
        dev = self.dev[:n_dev] if self.dev else self.test[n_test:n_test + n_dev]
        if len(dev) < n_dev:
            raise ValueError(f"task {self.name!r} has {len(dev)} dev items for the {n_dev} asked "
                             f"({'its dev split' if self.dev else f'test items after the first {n_test}'}): "
                             f"lower dev_items or eval_items")
        return self.test[:n_test] + dev

    def split(self, split: str) -> Pairs:
        if split not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train', 'dev' or 'test'")
        return getattr(self, split)


@dataclass(frozen=True)
class _Spec:
    family: str
    instruction: str
    pairs: Callable[[], Sequence[tuple[str, str]]]
    heldout: bool
    suite: str = "classic"
    transfer: str = ""
    n_dev: int = 0
    strict: bool = True


_REGISTRY: dict[str, _Spec] = {}


def answers_by_input(pairs: Sequence[tuple[str, str]]) -> dict[str, set[str]]:
    """{input: its distinct answers}."""
    answers: dict[str, set[str]] = {}
    for x, y in pairs:
        answers.setdefault(x, set()).add(y)
    return answers


def unambiguous(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Distinct (input, answer) pairs, sorted, without any input that has two different answers
    (one right answer per input: exact match cannot score an ambiguous item fairly)."""
    return sorted((x, next(iter(ys))) for x, ys in answers_by_input(pairs).items() if len(ys) == 1)


def _split(name: str, pairs: Sequence[tuple[str, str]], n_dev: int = 0) -> tuple[Pairs, Pairs, Pairs]:
    """(train, dev, test): a shuffle seeded by the task's name, test items first, then dev, then train."""
    pairs = unambiguous(pairs)
    if len(pairs) < 4:
        raise ValueError(f"task {name!r} needs at least 4 distinct unambiguous examples, got {len(pairs)}")
    random.Random(zlib.crc32(name.encode()) ^ SPLIT_SEED).shuffle(pairs)
    n_test = min(MAX_TEST, len(pairs) // 2)
    n_dev = min(n_dev, len(pairs) // 8)
    cut = n_test + n_dev
    return tuple(pairs[cut:cut + MAX_TRAIN]), tuple(pairs[n_test:cut]), tuple(pairs[:n_test])


def register_task(name: str, instruction: str, pairs: Sequence[tuple[str, str]] | Callable,
                  family: str = "custom", heldout: bool = False, overwrite: bool = False, *,
                  suite: str = "classic", transfer: str = "", n_dev: int = 0, strict: bool = True) -> Task:
    """Add a task to the registry; every phase can then run on it by name.

    `pairs` is a list of (input, answer) strings, or a zero-argument callable returning one;
    `family` is its type label; `n_dev` items (at most an eighth of them) form its dev split.
    `strict` (the default, for your own data): pairs of strings only, and an input given two
    different answers is an error that names it (exact duplicates are collapsed, and counted where
    too few items remain). The built-in suites pass strict=False: their values are written with
    str() and an input with two answers is dropped (their sources produce such inputs by design)."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"task name {name!r} must be non-empty letters, digits and underscores")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"task {name!r}: the instruction must be a non-empty string, got {instruction!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"task {name!r} is already registered; pass overwrite=True to replace it")
    if suite not in SUITES:
        raise ValueError(f"task {name!r}: unknown suite {suite!r}; expected one of {SUITES}")
    if transfer and (transfer not in TRANSFERS or not heldout):
        raise ValueError(f"task {name!r}: transfer {transfer!r} needs heldout=True and one of {TRANSFERS}")
    source = pairs if callable(pairs) else (lambda p=tuple(pairs): p)
    previous = _REGISTRY.get(name)
    _REGISTRY[name] = _Spec(family, instruction, source, heldout, suite, transfer, n_dev, strict)
    _build.cache_clear()
    try:
        return get_task(name)
    except Exception:  # a task that cannot be built is not registered
        if previous is None:
            del _REGISTRY[name]
        else:
            _REGISTRY[name] = previous
        raise


def _strict_pairs(name: str, raw) -> list[tuple[str, str]]:
    """A user's pairs, checked: 2-item sequences of strings, one answer per input; exact duplicates
    collapsed (the error for too few items counts them)."""
    pairs = []
    for i, item in enumerate(raw):
        if isinstance(item, (str, bytes)) or not isinstance(item, abc.Sequence) or len(item) != 2:
            raise ValueError(f"task {name!r}: item {i} is {item!r}; each item must be an (input, answer) pair of strings")
        if not all(isinstance(v, str) for v in item):
            raise ValueError(f"task {name!r}: item {i} is {tuple(item)!r}; inputs and answers must be strings "
                             f"(write str(value) for numbers; None is not an answer)")
        if "\n" in item[0] or "\n" in item[1] or not item[1].strip():
            raise ValueError(f"task {name!r}: item {i} is {tuple(item)!r}; inputs and answers must be one non-empty line")
        pairs.append((item[0], item[1]))
    answers = answers_by_input(pairs)
    conflicts = sorted(x for x, ys in answers.items() if len(ys) > 1)
    if conflicts:
        shown = "; ".join(f"{x!r} -> {sorted(answers[x])}" for x in conflicts[:5])
        raise ValueError(f"task {name!r}: {len(conflicts)} input(s) have two or more different answers ({shown}"
                         f"{'; ...' if len(conflicts) > 5 else ''}); give each input one answer")
    distinct = len(set(pairs))
    if distinct < 4:
        collapsed = len(pairs) - distinct
        raise ValueError(f"task {name!r} needs at least 4 distinct examples, got {distinct}"
                         + (f" ({len(pairs)} given, {collapsed} exact duplicate(s) collapsed)" if collapsed else ""))
    return pairs


@lru_cache(maxsize=None)
def _build(name: str) -> Task:
    spec = _REGISTRY[name]
    raw = spec.pairs()
    pairs = _strict_pairs(name, raw) if spec.strict else [(str(x), str(y)) for x, y in raw]
    for x, y in pairs:
        if "\n" in x or "\n" in y or not y.strip():
            raise ValueError(f"task {name!r}: inputs and answers must be one non-empty line, got {(x, y)!r}")
    train, dev, test = _split(name, pairs, spec.n_dev)
    return Task(name, spec.family, spec.instruction, train, test, spec.heldout, dev, spec.suite, spec.transfer)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        from llgbm.core import suite as _large  # lazy: a large-suite task is known once it registers
        _large.register()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5)
        raise KeyError(f"unknown task {name!r}" + (f"; the closest: {', '.join(close)}" if close else "")
                       + f"; the classic suite: {', '.join(list_tasks())}"
                       + f" ({len(_REGISTRY)} tasks in all: list_tasks(suite=None) names them)")
    return _build(name)


def list_tasks(family: str | None = None, heldout: bool | None = None, suite: str | None = "classic",
               transfer: str | None = None) -> list[str]:
    """Task names in registry order, filtered by family (type), held-out flag, suite and transfer.

    suite="classic" (the default) is the first suite plus tasks registered by hand; "large" is the
    large suite, which holds the classic built-in tasks too; None is every registered task."""
    if suite is not None and suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES} or None")
    if suite == "large":
        from llgbm.core import suite as _large  # lazy: the large suite registers itself on import
        _large.register()
    return [n for n, s in _REGISTRY.items()
            if (family is None or s.family == family) and (heldout is None or s.heldout == heldout)
            and (transfer is None or s.transfer == transfer)
            and (suite is None or s.suite == suite or (suite == "large" and n in BUILTIN_TASKS))]


def describe(names: list[str]) -> list[dict]:
    """One row per task (family, held out, split sizes, instruction, a test example): the suite table."""
    return [dict(task=t.name, family=t.family, suite=t.suite, heldout=t.heldout, transfer=t.transfer,
                 n_train=len(t.train), n_dev=len(t.dev), n_test=len(t.test),
                 instruction=t.instruction, example=" → ".join(t.test[0])) for t in map(get_task, names)]


def families(suite: str | None = "classic") -> list[str]:
    """The task types (families) of a suite, in registry order."""
    return list(dict.fromkeys(_REGISTRY[n].family for n in list_tasks(suite=suite)))


# ---------------------------------------------------------------------------------------------
# Built-in suite. Held-out tasks sit between training tasks of the same family (add_3 between
# add_1/add_2 and add_10; Italian among the Romance languages) so zero-shot transfer is possible.

def _builtin(*args, **kw) -> Task:
    """register_task for the built-in tasks: values written with str(), ambiguous inputs dropped."""
    return register_task(*args, strict=False, **kw)


def _countries():
    import pycountry
    # Short common names only: "Bolivia, Plurinational State of" is an ISO formality, not a task.
    return [c for c in pycountry.countries if "," not in c.name and "(" not in c.name and len(c.name) <= 24]


def _country_names(lang: str):
    import pycountry
    tr = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=[lang])
    return [(c.name, tr.gettext(c.name)) for c in _countries()]


def _languages():
    import pycountry
    return [(lang.alpha_2, lang.name) for lang in pycountry.languages
            if hasattr(lang, "alpha_2") and "(" not in lang.name and ";" not in lang.name]


def _numbers(lang: str, to: str = "cardinal", hi: int = 250):
    from num2words import num2words
    return [(str(n), num2words(n, lang=lang, to=to)) for n in range(hi)]


def _random_words(name: str, n: int, length: int):
    rng = random.Random(zlib.crc32(name.encode()))
    return [" ".join(rng.choice(string.ascii_lowercase) for _ in range(length)) for _ in range(n)]


def _caesar(word: str, k: int) -> str:
    return " ".join(chr((ord(c) - 97 + k) % 26 + 97) for c in word.split())


def _add(name: str, k: int):
    rng = random.Random(zlib.crc32(name.encode()))
    return [(str(n), str(n + k)) for n in rng.sample(range(10, 1000), 600)]


_LANG_NAMES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
               "pt": "Portuguese", "sv": "Swedish", "pl": "Polish"}
for _code, _lang in _LANG_NAMES.items():
    _builtin(f"country_en_to_{_code}", f"Translate the country name into {_lang}.",
             lambda c=_code: _country_names(c), family="country_names", heldout=_code in ("it", "nl"))

_builtin("country_to_alpha2", "Give the two-letter ISO 3166 code of the country.",
         lambda: [(c.name, c.alpha_2) for c in _countries()], family="iso_codes")
_builtin("country_to_alpha3", "Give the three-letter ISO 3166 code of the country.",
         lambda: [(c.name, c.alpha_3) for c in _countries()], family="iso_codes")
_builtin("alpha2_to_country", "Name the country with this two-letter ISO code.",
         lambda: [(c.alpha_2, c.name) for c in _countries()], family="iso_codes")
_builtin("alpha3_to_country", "Name the country with this three-letter ISO code.",
         lambda: [(c.alpha_3, c.name) for c in _countries()], family="iso_codes", heldout=True)
_builtin("alpha3_to_alpha2", "Convert the three-letter country code to its two-letter code.",
         lambda: [(c.alpha_3, c.alpha_2) for c in _countries()], family="iso_codes")
_builtin("language_to_alpha2", "Give the two-letter ISO 639 code of the language.",
         lambda: [(n, a) for a, n in _languages()], family="iso_codes")
_builtin("alpha2_to_language", "Name the language with this two-letter ISO 639 code.",
         _languages, family="iso_codes", heldout=True)
_builtin("currency_to_name", "Name the currency with this ISO 4217 code.",
         lambda: [(c.alpha_3, c.name) for c in __import__("pycountry").currencies],
         family="iso_codes")

for _code, _lang in [("en", "English"), ("fr", "French"), ("de", "German"), ("es", "Spanish"),
                     ("it", "Italian"), ("pt", "Portuguese"), ("nl", "Dutch")]:
    _builtin(f"number_words_{_code}", f"Write the number in {_lang} words.",
             lambda c=_code: _numbers(c), family="number_words", heldout=_code in ("it", "pt"))
_builtin("ordinal_words_en", "Write the ordinal of the number in English words.",
         lambda: _numbers("en", "ordinal"), family="number_words")

for _k in (1, 2, 3, 10):
    _builtin(f"add_{_k}", f"Add {_k} to the number.", lambda k=_k: _add(f"add_{k}", k),
             family="transforms", heldout=_k == 3)
_builtin("subtract_1", "Subtract 1 from the number.",
         lambda: [(str(n), str(n - 1)) for n in random.Random(7).sample(range(10, 1000), 600)],
         family="transforms")
for _k in (1, 2, 3):
    _builtin(f"caesar_{_k}", f"Shift every letter {_k} place{'s' * (_k > 1)} forward in the alphabet.",
             lambda k=_k: [(w, _caesar(w, k)) for w in _random_words(f"caesar_{k}", 600, 4)],
             family="transforms", heldout=_k == 2)
_builtin("reverse_letters", "Reverse the order of the letters.",
         lambda: [(w, " ".join(reversed(w.split()))) for w in _random_words("reverse", 600, 5)],
         family="transforms")
_builtin("uppercase_letters", "Write the letters in upper case.",
         lambda: [(w, w.upper()) for w in _random_words("upper", 600, 5)], family="transforms")

BUILTIN_TASKS = tuple(_REGISTRY)
