"""The task suite: short instruction-following text tasks built from real offline data
(pycountry's ISO tables and gettext catalogues, num2words) and procedural transforms.

Every task has a deterministic train/test split, an exact-match scorer, and a flag that marks it
held out: held-out tasks are never used to train a generator and serve zero-shot evaluation."""
from __future__ import annotations

import gettext
import random
import string
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

SPLIT_SEED = 0          # changing it changes every split: keep it fixed across the lab
MAX_TEST = 100          # test items per task (fewer when the source is small)
MAX_TRAIN = 400

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    instruction: str
    train: Pairs
    test: Pairs
    heldout: bool = False

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

    def split(self, split: str) -> Pairs:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        return self.train if split == "train" else self.test


@dataclass(frozen=True)
class _Spec:
    family: str
    instruction: str
    pairs: Callable[[], Sequence[tuple[str, str]]]
    heldout: bool


_REGISTRY: dict[str, _Spec] = {}


def _split(name: str, pairs: Sequence[tuple[str, str]], n_test: int | None = None) -> tuple[Pairs, Pairs]:
    pairs = sorted(dict(pairs).items())  # one gold answer per input, order-independent
    if len(pairs) < 4:
        raise ValueError(f"task {name!r} needs at least 4 distinct examples, got {len(pairs)}")
    random.Random(zlib.crc32(name.encode()) ^ SPLIT_SEED).shuffle(pairs)
    n_test = n_test or min(MAX_TEST, len(pairs) // 2)
    return tuple(pairs[n_test:n_test + MAX_TRAIN]), tuple(pairs[:n_test])


def register_task(name: str, instruction: str, pairs: Sequence[tuple[str, str]] | Callable,
                  family: str = "custom", heldout: bool = False, overwrite: bool = False) -> Task:
    """Add a task to the registry; every phase can then run on it by name.

    `pairs` is a list of (input, answer) strings, or a zero-argument callable returning one."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"task name {name!r} must be non-empty letters, digits and underscores")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"task {name!r} is already registered; pass overwrite=True to replace it")
    source = pairs if callable(pairs) else (lambda p=tuple(pairs): p)
    previous = _REGISTRY.get(name)
    _REGISTRY[name] = _Spec(family, instruction, source, heldout)
    _build.cache_clear()
    try:
        return get_task(name)
    except Exception:  # a task that cannot be built is not registered
        if previous is None:
            del _REGISTRY[name]
        else:
            _REGISTRY[name] = previous
        raise


@lru_cache(maxsize=None)
def _build(name: str) -> Task:
    spec = _REGISTRY[name]
    pairs = [(str(x), str(y)) for x, y in spec.pairs()]
    for x, y in pairs:
        if "\n" in x or "\n" in y or not y.strip():
            raise ValueError(f"task {name!r}: inputs and answers must be one non-empty line, got {(x, y)!r}")
    train, test = _split(name, pairs)
    return Task(name, spec.family, spec.instruction, train, test, spec.heldout)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _build(name)


def list_tasks(family: str | None = None, heldout: bool | None = None) -> list[str]:
    """Task names in registry order, optionally filtered by family and held-out flag."""
    return [n for n, s in _REGISTRY.items()
            if (family is None or s.family == family) and (heldout is None or s.heldout == heldout)]


def describe(names: list[str]) -> list[dict]:
    """One row per task (family, held out, split sizes, instruction, a test example): the suite table."""
    return [dict(task=t.name, family=t.family, heldout=t.heldout, n_train=len(t.train), n_test=len(t.test),
                 instruction=t.instruction, example=" → ".join(t.test[0])) for t in map(get_task, names)]


def families() -> list[str]:
    return list(dict.fromkeys(s.family for s in _REGISTRY.values()))


# ---------------------------------------------------------------------------------------------
# Built-in suite. Held-out tasks sit between training tasks of the same family (add_3 between
# add_1/add_2 and add_10; Italian among the Romance languages) so zero-shot transfer is possible.

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
    register_task(f"country_en_to_{_code}", f"Translate the country name into {_lang}.",
                  lambda c=_code: _country_names(c), family="country_names", heldout=_code in ("it", "nl"))

register_task("country_to_alpha2", "Give the two-letter ISO 3166 code of the country.",
              lambda: [(c.name, c.alpha_2) for c in _countries()], family="iso_codes")
register_task("country_to_alpha3", "Give the three-letter ISO 3166 code of the country.",
              lambda: [(c.name, c.alpha_3) for c in _countries()], family="iso_codes")
register_task("alpha2_to_country", "Name the country with this two-letter ISO code.",
              lambda: [(c.alpha_2, c.name) for c in _countries()], family="iso_codes")
register_task("alpha3_to_country", "Name the country with this three-letter ISO code.",
              lambda: [(c.alpha_3, c.name) for c in _countries()], family="iso_codes", heldout=True)
register_task("alpha3_to_alpha2", "Convert the three-letter country code to its two-letter code.",
              lambda: [(c.alpha_3, c.alpha_2) for c in _countries()], family="iso_codes")
register_task("language_to_alpha2", "Give the two-letter ISO 639 code of the language.",
              lambda: [(n, a) for a, n in _languages()], family="iso_codes")
register_task("alpha2_to_language", "Name the language with this two-letter ISO 639 code.",
              _languages, family="iso_codes", heldout=True)
register_task("currency_to_name", "Name the currency with this ISO 4217 code.",
              lambda: [(c.alpha_3, c.name) for c in __import__("pycountry").currencies],
              family="iso_codes")

for _code, _lang in [("en", "English"), ("fr", "French"), ("de", "German"), ("es", "Spanish"),
                     ("it", "Italian"), ("pt", "Portuguese"), ("nl", "Dutch")]:
    register_task(f"number_words_{_code}", f"Write the number in {_lang} words.",
                  lambda c=_code: _numbers(c), family="number_words", heldout=_code in ("it", "pt"))
register_task("ordinal_words_en", "Write the ordinal of the number in English words.",
              lambda: _numbers("en", "ordinal"), family="number_words")

for _k in (1, 2, 3, 10):
    register_task(f"add_{_k}", f"Add {_k} to the number.", lambda k=_k: _add(f"add_{k}", k),
                  family="transforms", heldout=_k == 3)
register_task("subtract_1", "Subtract 1 from the number.",
              lambda: [(str(n), str(n - 1)) for n in random.Random(7).sample(range(10, 1000), 600)],
              family="transforms")
for _k in (1, 2, 3):
    register_task(f"caesar_{_k}", f"Shift every letter {_k} place{'s' * (_k > 1)} forward in the alphabet.",
                  lambda k=_k: [(w, _caesar(w, k)) for w in _random_words(f"caesar_{k}", 600, 4)],
                  family="transforms", heldout=_k == 2)
register_task("reverse_letters", "Reverse the order of the letters.",
              lambda: [(w, " ".join(reversed(w.split()))) for w in _random_words("reverse", 600, 5)],
              family="transforms")
register_task("uppercase_letters", "Write the letters in upper case.",
              lambda: [(w, w.upper()) for w in _random_words("upper", 600, 5)], family="transforms")

BUILTIN_TASKS = tuple(list_tasks())
