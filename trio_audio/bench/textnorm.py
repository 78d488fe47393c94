"""English text normalisation for word error rates, after Whisper's ``EnglishTextNormalizer``.

The rules follow ``whisper/normalizers/english.py`` of openai/whisper (MIT licence, Copyright
(c) 2022 OpenAI), abridged: case, bracketed and parenthesised asides, hesitations
(``hmm``, ``uh``, ``um``), contractions and titles, punctuation and diacritics, and spoken
numbers written as digits (``"twenty five"`` and ``"25"`` both become ``25``, ``"ten
percent"`` ``10%``, ``"five dollars"`` ``$5``, ``"first"`` ``1st``). Left out: Whisper's
British-to-American spelling table and its rarer number forms (fractions, "double", "oh").
Both sides of a comparison go through the same function, so what is left out counts against
an engine only where it and the reference write a word differently.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

IGNORE: Final = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")
REPLACERS: Final = {
    r"\bwon't\b": "will not", r"\bcan't\b": "can not", r"\blet's\b": "let us",
    r"\bain't\b": "aint", r"\by'all\b": "you all", r"\bwanna\b": "want to",
    r"\bgotta\b": "got to", r"\bgonna\b": "going to", r"\bi'ma\b": "i am going to",
    r"\bimma\b": "i am going to", r"\bwoulda\b": "would have", r"\bcoulda\b": "could have",
    r"\bshoulda\b": "should have", r"\bma'am\b": "madam",
    r"\bmr\b": "mister ", r"\bmrs\b": "missus ", r"\bst\b": "saint ", r"\bdr\b": "doctor ",
    r"\bprof\b": "professor ", r"\bcapt\b": "captain ", r"\bgov\b": "governor ",
    r"\bald\b": "alderman ", r"\bgen\b": "general ", r"\bsen\b": "senator ",
    r"\brep\b": "representative ", r"\bpres\b": "president ", r"\brev\b": "reverend ",
    r"\bhon\b": "honorable ", r"\basst\b": "assistant ", r"\bassoc\b": "associate ",
    r"\blt\b": "lieutenant ", r"\bcol\b": "colonel ", r"\bjr\b": "junior ", r"\bsr\b": "senior ",
    r"\besq\b": "esquire ",
    r"'d been\b": " had been", r"'s been\b": " has been", r"'d gone\b": " had gone",
    r"'s gone\b": " has gone", r"'d done\b": " had done", r"'s got\b": " has got",
    r"n't\b": " not", r"'re\b": " are", r"'s\b": " is", r"'d\b": " would", r"'ll\b": " will",
    r"'t\b": " not", r"'ve\b": " have", r"'m\b": " am",
}  # fmt: skip
_ONES_WORDS: Final = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
)
_TENS_WORDS: Final = "twenty thirty forty fifty sixty seventy eighty ninety"
ONES: Final = {name: i for i, name in enumerate(_ONES_WORDS.split())}
TENS: Final = {name: 10 * i for i, name in enumerate(_TENS_WORDS.split(), 2)}
MULTIPLIERS: Final = {"hundred": 100, "thousand": 1_000, "million": 1_000_000,
                      "billion": 1_000_000_000}  # fmt: skip
ORDINALS: Final = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50,
    "sixtieth": 60, "seventieth": 70, "eightieth": 80, "ninetieth": 90, "hundredth": 100,
    "thousandth": 1000,
}  # fmt: skip


def _suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def remove_symbols(text: str, keep: str = ".%$¢€£") -> str:
    """Marks, symbols and punctuation become spaces (but *keep*); diacritics are dropped."""
    out = []
    for char in unicodedata.normalize("NFKD", text):
        category = unicodedata.category(char)
        if category == "Mn":
            continue
        out.append(char if char in keep or category[0] not in "MSP" else " ")
    return "".join(out)


class _Number:
    """A cardinal being read word by word (``total`` + ``group`` below a thousand)."""

    def __init__(self) -> None:
        self.total = 0
        self.group = 0
        self.last = ""  # "ones", "teens", "tens", "hundred", "multiplier"

    def value(self) -> int:
        return self.total + self.group


def _joins(number: _Number | None, following: list[str]) -> bool:
    """Whether "and" continues *number* ("one hundred and five") into *following*."""
    return (
        number is not None
        and number.last in ("hundred", "multiplier")
        and bool(following)
        and (following[0] in ONES or following[0] in TENS)
    )


def standardize_numbers(text: str) -> str:
    """Spoken cardinals and ordinals as digits; ``percent`` and ``dollars`` as symbols."""
    words = text.split()
    out: list[str] = []
    number: _Number | None = None
    i = 0

    def flush() -> None:
        nonlocal number
        if number is not None:
            out.append(str(number.value()))
            number = None

    while i < len(words):
        word = words[i]
        if word in ONES or word in TENS:
            value = ONES.get(word, TENS.get(word, 0))
            kind = "tens" if word in TENS else ("teens" if value >= 10 else "ones")
            # "one one", "twenty thirty", "ten five": separate numbers
            if number is not None and (
                (kind != "ones" and number.last in ("ones", "teens", "tens"))
                or (kind == "ones" and number.last in ("ones", "teens"))
            ):
                flush()
            if number is None:
                number = _Number()
            number.group += value
            number.last = kind
        elif word in MULTIPLIERS and number is not None:
            factor = MULTIPLIERS[word]
            if factor == 100:
                number.group = max(number.group, 1) * 100
                number.last = "hundred"
            else:
                number.total += max(number.group, 1) * factor
                number.group = 0
                number.last = "multiplier"
        elif word in ORDINALS:
            value = ORDINALS[word]
            if (
                number is not None
                and number.last in ("tens", "hundred", "multiplier")
                and (value < 10 or value in (100, 1000))
            ):
                whole = number.value()
                result = max(whole, 1) * value if value >= 100 else whole + value
                number = None
            else:
                flush()
                result = value
            out.append(f"{result}{_suffix(result)}")
        elif word == "and" and _joins(number, words[i + 1 : i + 2]):
            pass  # "one hundred and five"
        elif word == "point" and number is not None and i + 1 < len(words) \
                and words[i + 1] in ONES and ONES[words[i + 1]] < 10:  # fmt: skip
            digits = []
            while i + 1 < len(words) and words[i + 1] in ONES and ONES[words[i + 1]] < 10:
                digits.append(str(ONES[words[i + 1]]))
                i += 1
            out.append(f"{number.value()}.{''.join(digits)}")
            number = None
        elif word in ("percent", "per") and (number is not None or (out and out[-1].isdigit())):
            if word == "per" and (i + 1 >= len(words) or words[i + 1] != "cent"):
                flush()
                out.append(word)
            else:
                flush()
                out[-1] += "%"
                i += 1 if word == "per" else 0
        elif word in ("dollar", "dollars") and (number is not None or (out and out[-1].isdigit())):
            flush()
            out[-1] = "$" + out[-1]
        else:
            flush()
            out.append(word)
        i += 1
    flush()
    return " ".join(out)


def normalize(text: str) -> str:
    """*text* as Whisper's English normaliser would compare it."""
    s = text.lower()
    s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)  # asides in brackets
    s = re.sub(r"\(([^)]+?)\)", "", s)  # and in parentheses
    s = IGNORE.sub("", s)
    s = re.sub(r"\s+'", "'", s)  # a space before an apostrophe
    for pattern, replacement in REPLACERS.items():
        s = re.sub(pattern, replacement, s)
    s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 32,000 -> 32000
    s = re.sub(r"\.+([^0-9]|$)", r" \1", s)  # periods not inside a number
    s = remove_symbols(s)
    s = standardize_numbers(s)
    s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)  # symbols not next to a number
    s = re.sub(r"([^0-9])%", r"\1 ", s)
    return re.sub(r"\s+", " ", s).strip()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words) after normalising both: Levenshtein over words."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)
