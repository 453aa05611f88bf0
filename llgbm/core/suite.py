"""The large task suite: hundreds of short tasks in many types, all from data that PyPI packages
ship (babel's CLDR locale data, num2words, pycountry) or the standard library (unicodedata,
datetime, number and string transforms); nothing is fetched at run time.

Every task has an instruction, train / dev / test splits (`tasks.MAX_DEV` dev items, for choices
only), one right answer per input (inputs with two answers are dropped), an exact-match scorer and
a type label (its `family`). Held-out tasks come in two kinds, reported apart:
- near: a new task of a type seen in training (a new locale, a new shift): one per seen type (NEAR);
- far: every task of a type never seen in training (FAR_TYPES).
The classic suite's 34 built-in tasks belong to this suite too; their held-out tasks count as near.

`register()` adds the suite to the registry (once); `tasks.list_tasks(suite="large")` and
`tasks.get_task` of a name not yet known call it."""
from __future__ import annotations

import dataclasses
import datetime
import random
import string
import unicodedata
import zlib
from collections import Counter
from decimal import Decimal

from llgbm.core import tasks

ITEMS = 600              # inputs drawn for procedural tasks (enough for test + dev + train)
MIN_ITEMS = 48           # a task with fewer unambiguous items is not built
MAX_ANSWER = 64          # characters: longer answers are dropped (short answers, exact match)
REF_DATE = datetime.date(2024, 1, 1)   # "current" currencies and languages are read at this date

# Latin-script CLDR locales with their English names (the target languages of name tasks).
LOCALES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch", "pt": "Portuguese",
           "sv": "Swedish", "pl": "Polish", "da": "Danish", "fi": "Finnish", "nb": "Norwegian Bokmål", "cs": "Czech",
           "hu": "Hungarian", "ro": "Romanian", "tr": "Turkish", "id": "Indonesian", "ca": "Catalan", "hr": "Croatian",
           "sk": "Slovak", "sl": "Slovenian", "et": "Estonian", "lv": "Latvian", "lt": "Lithuanian", "vi": "Vietnamese"}
# num2words languages whose cardinals and ordinals are spelled in Latin script.
CARDINALS = ("en", "fr", "de", "es", "it", "pt", "nl", "da", "sv", "no", "fi", "pl", "cs", "id", "ro", "tr", "hu",
             "lt", "lv", "sk", "ca", "eo", "az")
ORDINALS = ("en", "fr", "de", "es", "it", "pt", "nl", "da", "sv", "no", "fi", "pl", "id", "ro", "tr", "hu", "ca", "eo")
PLURAL_LOCALES = ("pl", "ru", "cs", "lt", "lv", "sl", "ga", "cy", "ro", "uk", "ar", "he", "mt", "br", "gd", "fr")
WEEKDAY_LOCALES = ("en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "fi", "tr", "cs")
UNICODE_BLOCKS = {"latin1": (0xA0, 0x100), "latin_ext_a": (0x100, 0x180), "latin_ext_b": (0x180, 0x250),
                  "greek": (0x370, 0x400), "cyrillic": (0x400, 0x500), "arrows": (0x2190, 0x2200),
                  "math": (0x2200, 0x2300), "box": (0x2500, 0x2580), "shapes": (0x25A0, 0x2600),
                  "symbols": (0x2600, 0x2700), "dingbats": (0x2700, 0x27C0), "latin_ext_additional": (0x1E00, 0x1F00)}

# Types never seen in training: every task of these is a far held-out task.
FAR_TYPES = ("weekday", "plural_category", "unicode_names")
# The near held-out task of each seen type (the classic types' held-out tasks count as near too).
NEAR = ("territory_names_ca", "language_names_hu", "currency_names_ro", "date_long_sv", "number_format_fr_CH",
        "cardinal_words_eo", "ordinals_ro", "subdivision_names_IT", "arithmetic_mul_7", "base_to_octal",
        "cipher_caesar_9", "string_sort", "transliteration_ro", "iso_script_to_name", "country_currency")


# ------------------------------------------------------------------------------ sources

def _rng(name: str) -> random.Random:
    return random.Random(zlib.crc32(name.encode()))


def _locale(code: str):
    from babel import Locale
    return Locale.parse(code)


def _territories() -> dict[str, str]:
    """{alpha-2 code: English name} of CLDR's territories (not regions such as "001")."""
    return {c: n for c, n in _locale("en").territories.items() if len(c) == 2 and c.isalpha() and c not in ("ZZ", "XA", "XB")}


def territory_names(loc: str):
    names = _locale(loc).territories
    return [(en, names[c]) for c, en in _territories().items() if c in names]


def language_names(loc: str):
    en, names = _locale("en").languages, _locale(loc).languages
    return [(en[c], names[c]) for c in en if c in names and "_" not in c and len(c) <= 3]


def currency_names(loc: str):
    from babel.numbers import get_currency_name
    return [(c, get_currency_name(c, locale=loc)) for c in _locale("en").currencies
            if len(c) == 3 and get_currency_name(c, locale=loc) != c]


def _dates(name: str) -> list[datetime.date]:
    rng, start = _rng(name), datetime.date(1950, 1, 1)
    return [start + datetime.timedelta(days=d) for d in rng.sample(range(365 * 100), ITEMS)]


def dates_long(loc: str):
    from babel.dates import format_date
    return [(d.isoformat(), format_date(d, "long", locale=loc)) for d in _dates(f"date_long_{loc}")]


def weekdays(loc: str):
    from babel.dates import format_date
    return [(d.isoformat(), format_date(d, "EEEE", locale=loc)) for d in _dates(f"weekday_{loc}")]


def number_formats(loc: str, currency: str | None = None):
    from babel.numbers import format_currency, format_decimal
    rng = _rng(f"number_format_{loc}_{currency}")
    values = [Decimal(rng.randrange(100, 10**8)) / 100 for _ in range(ITEMS)]
    fmt = (lambda v: format_currency(v, currency, locale=loc)) if currency else (lambda v: format_decimal(v, locale=loc))
    return [(f"{v:.2f}", fmt(v)) for v in values]


def plural_categories(loc: str):
    rule = _locale(loc).plural_form
    return [(str(n), rule(n)) for n in range(ITEMS)]


def numbers(lang: str, to: str):
    """Numbers below 10,000 (cardinals) or 1,000 (ordinals) in words; a number num2words fails on
    (its Catalan ordinals raise for some) has no right answer here and is left out."""
    from num2words import num2words
    out = []
    for n in _rng(f"{to}_{lang}").sample(range(1, 10_000 if to == "cardinal" else 1000), ITEMS):
        try:
            out.append((str(n), num2words(n, lang=lang, to=to)))
        except (KeyError, IndexError, NotImplementedError):
            continue
    return out


def subdivisions(country: str):
    import pycountry
    return [(s.code, s.name) for s in pycountry.subdivisions.get(country_code=country)]


def subdivision_countries() -> list[str]:
    import pycountry
    counts = Counter(s.country_code for s in pycountry.subdivisions)
    return sorted(c for c, n in counts.items() if n >= MIN_ITEMS)


def unicode_names(lo: int, hi: int):
    return [(chr(i), unicodedata.name(chr(i))) for i in range(lo, hi) if unicodedata.name(chr(i), "")
            and unicodedata.category(chr(i))[0] in "LSNP"]


def ascii_folded(loc: str):
    """Localized language names with non-ASCII letters → the same names without accents (NFKD)."""
    fold = lambda s: unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return [(n, fold(n)) for _, n in language_names(loc) if not n.isascii() and fold(n).strip()]


def country_currencies():
    from babel.numbers import get_territory_currencies
    out = []
    for code, name in _territories().items():
        cur = get_territory_currencies(code, REF_DATE, non_tender=False)
        if len(cur) == 1:
            out.append((name, cur[0]))
    return out


def country_languages():
    from babel.languages import get_official_languages
    en = _locale("en").languages
    return [(name, en[langs[0]]) for code, name in _territories().items()
            if len(langs := get_official_languages(code)) == 1 and langs[0] in en]


# ------------------------------------------------------------------------------ procedures

def _letters(name: str, length: int = 5):
    rng = _rng(name)
    return [" ".join(rng.choice(string.ascii_lowercase) for _ in range(length)) for _ in range(ITEMS)]


def _shift(word: str, k: int) -> str:
    return " ".join(chr((ord(c) - 97 + k) % 26 + 97) for c in word.split())


def to_roman(n: int) -> str:
    out = []
    for value, sym in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                       (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        count, n = divmod(n, value)
        out.append(sym * count)
    return "".join(out)


def _ints(name: str, lo: int = 10, hi: int = 1000):
    return _rng(name).sample(range(lo, hi), min(ITEMS, hi - lo))


ARITHMETIC = {**{f"add_{k}": (f"Add {k} to the number.", lambda n, k=k: n + k) for k in (4, 5, 6, 7, 8, 9, 20, 50, 100)},
              **{f"sub_{k}": (f"Subtract {k} from the number.", lambda n, k=k: n - k) for k in (2, 3, 5, 7, 10, 100)},
              **{f"mul_{k}": (f"Multiply the number by {k}.", lambda n, k=k: n * k) for k in (2, 3, 4, 5, 7, 9, 11)},
              "double_plus_1": ("Double the number, then add 1.", lambda n: 2 * n + 1),
              "mod_10": ("Give the last digit of the number.", lambda n: n % 10),
              "mod_7": ("Give the remainder of the number divided by 7.", lambda n: n % 7),
              "half": ("Give half of the number, rounded down.", lambda n: n // 2),
              "digit_sum": ("Give the sum of the digits of the number.", lambda n: sum(map(int, str(n)))),
              "square": ("Give the square of the number.", lambda n: n * n)}
BASES = {"to_binary": ("Write the number in binary.", lambda n: format(n, "b")),
         "to_octal": ("Write the number in octal.", lambda n: format(n, "o")),
         "to_hex": ("Write the number in hexadecimal.", lambda n: format(n, "x")),
         "to_roman": ("Write the number in Roman numerals.", to_roman)}
INVERSE_BASES = {"from_binary": ("Write the binary number in decimal.", "to_binary"),
                 "from_hex": ("Write the hexadecimal number in decimal.", "to_hex"),
                 "from_roman": ("Write the Roman numeral as a decimal number.", "to_roman")}
CIPHERS = {**{f"caesar_{k}": (f"Shift every letter {k} places forward in the alphabet.", lambda w, k=k: _shift(w, k))
              for k in (4, 5, 6, 7, 9, 11, 13, 20, 25)},
           "atbash": ("Replace every letter by its mirror in the alphabet (a↔z, b↔y).",
                      lambda w: " ".join(chr(219 - ord(c)) for c in w.split()))}
STRING_EDITS = {"sort": ("Sort the letters alphabetically.", lambda w: " ".join(sorted(w.split()))),
                "first": ("Give the first letter.", lambda w: w.split()[0]),
                "last": ("Give the last letter.", lambda w: w.split()[-1]),
                "drop_first": ("Remove the first letter.", lambda w: " ".join(w.split()[1:])),
                "swap_ends": ("Swap the first and the last letter.", lambda w: " ".join([w.split()[-1], *w.split()[1:-1], w.split()[0]])),
                "rotate": ("Move the first letter to the end.", lambda w: " ".join(w.split()[1:] + w.split()[:1])),
                "no_vowels": ("Remove the vowels.", lambda w: " ".join(c for c in w.split() if c not in "aeiou") or "-"),
                "count_vowels": ("Count the vowels.", lambda w: str(sum(c in "aeiou" for c in w.split()))),
                "repeat": ("Write every letter twice.", lambda w: " ".join(c + " " + c for c in w.split())),
                "upper_first": ("Capitalise the first letter.", lambda w: w[0].upper() + w[1:]),
                "max_letter": ("Give the letter that comes last in the alphabet.", lambda w: max(w.split()))}
ISO = {"country_to_numeric": ("Give the ISO 3166 numeric code of the country.", lambda pc: [(c.name, c.numeric) for c in pc.countries]),
       "numeric_to_country": ("Name the country with this ISO 3166 numeric code.", lambda pc: [(c.numeric, c.name) for c in pc.countries]),
       "script_to_name": ("Name the writing system with this ISO 15924 code.", lambda pc: [(s.alpha_4, s.name) for s in pc.scripts]),
       "language3_to_name": ("Name the language with this ISO 639-3 code.", lambda pc: [(lg.alpha_3, lg.name) for lg in pc.languages]),
       "currency_to_numeric": ("Give the ISO 4217 numeric code of the currency.", lambda pc: [(c.alpha_3, c.numeric) for c in pc.currencies])}


# ------------------------------------------------------------------------------ the suite

def specs() -> list[tuple[str, str, str, object]]:
    """(name, type, instruction, pairs source) of every task the large suite adds, in order."""
    out = []
    add = lambda name, kind, instruction, source: out.append((name, kind, instruction, source))
    for loc, lang in LOCALES.items():
        add(f"territory_names_{loc}", "territory_names", f"Give the {lang} name of the country or territory.",
            lambda c=loc: territory_names(c))
    for loc, lang in list(LOCALES.items())[:16]:
        add(f"language_names_{loc}", "language_names", f"Give the {lang} name of the language.", lambda c=loc: language_names(c))
        add(f"currency_names_{loc}", "currency_names", f"Name the currency with this ISO 4217 code, in {lang}.",
            lambda c=loc: currency_names(c))
        add(f"date_long_{loc}", "date_format", f"Write the date in {lang}, in the long form.", lambda c=loc: dates_long(c))
    for loc in ("en", "de", "fr", "de_CH", "en_IN", "fr_CH"):
        add(f"number_format_{loc}", "number_format", f"Write the number as the {loc} locale formats it.",
            lambda c=loc: number_formats(c))
    for loc in ("en", "de", "fr", "de_CH", "pt", "nl", "hu", "ro"):
        add(f"currency_format_{loc}", "number_format", f"Write the amount in euros as the {loc} locale formats it.",
            lambda c=loc: number_formats(c, "EUR"))
    for lang in CARDINALS:
        add(f"cardinal_words_{lang}", "number_words", f"Write the number in words, in the language with code {lang}.",
            lambda c=lang: numbers(c, "cardinal"))
    for lang in ORDINALS:
        add(f"ordinals_{lang}", "ordinal_words", f"Write the ordinal of the number in words, in the language with code {lang}.",
            lambda c=lang: numbers(c, "ordinal"))
    for country in subdivision_countries():
        add(f"subdivision_names_{country}", "subdivision_names", "Name the subdivision with this ISO 3166-2 code.",
            lambda c=country: subdivisions(c))
    for key, (instruction, f) in ARITHMETIC.items():
        add(f"arithmetic_{key}", "arithmetic", instruction, lambda k=key, f=f: [(str(n), str(f(n))) for n in _ints(k)])
    for key, (instruction, f) in BASES.items():
        hi = 4000 if key == "to_roman" else 4096
        add(f"base_{key}", "base_conversion", instruction, lambda k=key, f=f, hi=hi: [(str(n), f(n)) for n in _ints(k, 1, hi)])
    for key, (instruction, forward) in INVERSE_BASES.items():
        add(f"base_{key}", "base_conversion", instruction,
            lambda k=key, f=BASES[forward][1]: [(f(n), str(n)) for n in _ints(k, 1, 4000)])
    for key, (instruction, f) in CIPHERS.items():
        add(f"cipher_{key}", "ciphers", instruction, lambda k=key, f=f: [(w, f(w)) for w in _letters(k, 4)])
    for key, (instruction, f) in STRING_EDITS.items():
        add(f"string_{key}", "string_edits", instruction, lambda k=key, f=f: [(w, f(w)) for w in _letters(k)])
    for loc in ("cs", "pl", "hu", "tr", "vi", "ro", "sk", "lv", "lt", "fr"):
        add(f"transliteration_{loc}", "transliteration", "Write the name without accents or diacritics.",
            lambda c=loc: ascii_folded(c))
    for key, (instruction, f) in ISO.items():
        add(f"iso_{key}", "iso_codes", instruction, lambda f=f: f(__import__("pycountry")))
    add("country_currency", "country_facts", "Give the ISO 4217 code of the country's currency.", country_currencies)
    add("country_language", "country_facts", "Name the official language of the country.", country_languages)
    for loc in WEEKDAY_LOCALES:
        add(f"weekday_{loc}", "weekday", f"Name the day of the week of the date, in the language with code {loc}.",
            lambda c=loc: weekdays(c))
    for loc in PLURAL_LOCALES:
        add(f"plural_category_{loc}", "plural_category",
            f"Give the CLDR plural category (zero, one, two, few, many or other) of the number in locale {loc}.",
            lambda c=loc: plural_categories(c))
    for block, (lo, hi) in UNICODE_BLOCKS.items():
        add(f"unicode_names_{block}", "unicode_names", "Give the Unicode name of the character.",
            lambda lo=lo, hi=hi: unicode_names(lo, hi))
    return out


_registered = False


def register() -> None:
    """Register the large suite's tasks (once); `tasks.list_tasks(suite="large")` names them."""
    global _registered
    if not _registered:
        for name in tasks.BUILTIN_TASKS:          # the classic held-out tasks are near ones here
            spec = tasks._REGISTRY[name]
            if spec.heldout and not spec.transfer:
                tasks._REGISTRY[name] = dataclasses.replace(spec, transfer="near")
        for name, kind, instruction, source in specs():
            if name in tasks._REGISTRY and tasks._REGISTRY[name].suite == "large":
                continue        # registered by an earlier call that stopped on an error
            far, near = kind in FAR_TYPES, name in NEAR
            tasks.register_task(name, instruction, _checked(name, source), family=kind, heldout=far or near,
                                suite="large", transfer="far" if far else "near" if near else "", n_dev=tasks.MAX_DEV,
                                strict=False)
        tasks._build.cache_clear()
        _registered = True


def _checked(name: str, source):
    def pairs():
        items = [(x, y) for x, y in source() if x.strip() and y.strip() and "\n" not in x + y and len(y) <= MAX_ANSWER]
        if len(tasks.unambiguous(items)) < MIN_ITEMS:
            raise ValueError(f"task {name!r} has {len(tasks.unambiguous(items))} unambiguous items, fewer than {MIN_ITEMS}")
        return items
    return pairs


def table() -> list[dict]:
    """One row per type of the large suite: tasks, training / near / far tasks, and items per split."""
    rows = {}
    for t in map(tasks.get_task, tasks.list_tasks(suite="large")):
        r = rows.setdefault(t.family, dict(type=t.family, tasks=0, train_tasks=0, near=0, far=0, train_items=0, dev_items=0, test_items=0))
        r["tasks"] += 1
        r["train_tasks" if not t.heldout else t.transfer or "near"] += 1
        r["train_items"], r["dev_items"], r["test_items"] = (r["train_items"] + len(t.train), r["dev_items"] + len(t.dev),
                                                             r["test_items"] + len(t.test))
    return list(rows.values())
