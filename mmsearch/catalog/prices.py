"""The amount of a price as shops write it: `12.50`, `$1,299.00`, `1.299,00 €`, `12,50`,
`CHF 1'299.00`, `1 299,00 EUR`, `15.00 USD`.

The one reader of a written amount: the cleaning stage (drop and feed prices) and the search's
sale and list prices ask it. Which mark is the decimal one: with both `,` and `.` the last one;
with one of them once, that one, except a `,` before exactly three digits (`1,299`), which
groups thousands as in the documented `$1,299.00`; a mark written twice or more groups
thousands (`1.299.000`). Groups of thousands must be three digits, so `1,2,3` is refused
rather than guessed.
"""

from __future__ import annotations

import re

_CURRENCY = re.compile(
    r"^\s*(?:[$€£¥₹₩₽¢]|[A-Za-z]{3}(?![A-Za-z]))?\s*|\s*(?:[$€£¥₹₩₽¢]|(?<![A-Za-z])[A-Za-z]{3})?\s*$"
)
# Spaces (also no-break and thin ones) and apostrophes between digits group thousands.
_SPACE_GROUPS = re.compile(r"(?<=\d)[\s\u00a0\u202f\u2009'’](?=\d)")
# `12,-` and `12.–` are whole amounts in German-speaking shops.
_WHOLE_MARK = re.compile(r"[.,][-–]?$")
_AMOUNT = re.compile(r"\d*(?:[',.]\d+)*")
_MARK_NAMES = {"'": "a space or '"}
_GROUPED = re.compile(r"\d{1,3}(?:'\d{3})*")


def read_amount(text: str) -> float:
    """The number in a price text, currency symbol or ISO code around it allowed; ValueError
    saying why when there is none or its separators are ambiguous. The sign is kept (`-5` is
    -5.0)."""
    amount = _CURRENCY.sub("", text)
    sign = -1.0 if amount.startswith("-") else 1.0
    amount = amount.removeprefix("-").removeprefix("+").strip()
    amount = _WHOLE_MARK.sub("", _SPACE_GROUPS.sub("'", amount))
    if not any(c.isdigit() for c in amount):
        raise ValueError("no digits")
    if not _AMOUNT.fullmatch(amount):
        raise ValueError("letters or signs among its digits")
    marks = [c for c in amount if c in ",."]
    if len(set(marks)) == 2 and marks.count(marks[-1]) > 1:
        raise ValueError("more than one decimal mark")
    decimal = _decimal_mark(marks, amount)
    whole, _, fraction = amount.rpartition(decimal) if decimal else (amount, "", "")
    if "'" in fraction:
        raise ValueError("digit groups after the decimal mark")
    thousands = {c for c in whole if not c.isdigit()}
    if len(thousands) > 1:
        marks = " and ".join(_MARK_NAMES.get(c, c) for c in sorted(thousands))
        raise ValueError(f"both {marks} group its digits")
    whole = whole.replace(thousands.pop(), "'") if thousands else whole
    if "'" in whole and not _GROUPED.fullmatch(whole):
        raise ValueError("digit groups that are not thousands")
    digits = whole.replace("'", "") or "0"
    return sign * float(f"{digits}.{fraction or '0'}")


def _decimal_mark(marks: list[str], amount: str) -> str | None:
    """The decimal mark of an amount made of digits, `'`, `,` and `.` (`marks`: its `,` and `.`
    in order); None when it has none."""
    if not marks:
        return None
    last = marks[-1]
    if marks.count(last) > 1:
        return None
    if len(set(marks)) == 2:
        return last
    whole, fraction = amount.rsplit(last, 1)
    if last == "," and len(fraction) == 3 and whole.replace("'", "").lstrip("0"):
        return None
    return last
