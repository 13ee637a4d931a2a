"""Variants, attribute filters and facets, availability and sale prices, for search answers.

A release carries each product's attributes as JSON (`attributes`: a drop's extra columns, a
feed's `group_id`, `color`, `size`, `availability`, `list_price`, ...). `CatalogAttributes` parses
them once, when an engine loads a release, into integer codes per attribute (NumPy arrays, one
JSON parse per distinct attributes text), so that at query time a filter is a vectorised mask,
facets are `np.bincount` over the answer's rows and grouping variants is one walk over the ranked
list.

Values are matched normalised (case, whitespace, `_` and `-`, common colour synonyms: a filter
for `red` also finds `Crimson`) and shown as the shop wrote them (a facet shows the spelling most
products use). A grouped answer shows each group as the variant whose values the query's words
name ("red" or "crimson" picks the red one), else as its best-ranked variant. Products without a
`group_id` are their own group; products without `availability` are available; a `sale_price`
attribute below the price is the price (the price then shows as `list_price`), as feeds already
write it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from mmsearch.catalog.attributes import (
    FILTERABLE,
    SEPARATORS,
    attribute_name,
    normalised_value,
)
from mmsearch.catalog.prices import read_amount
from mmsearch.catalog.text import words_of

# Availability values that leave a product out unless unavailable ones are asked for.
UNAVAILABLE = frozenset({"out_of_stock", "sold_out", "discontinued"})
# Every attribute search reads.
READ = frozenset({*FILTERABLE, "group_id", "availability", "list_price", "sale_price"})
# Values a refusal lists at most.
LISTED = 30
# Longest run of query words read as one value's other spelling ("burnt orange", "navy blue").
PHRASE_WORDS = 3
# A query word that is no value's word names a value when the products whose documents have it
# span at least `NAMING_GROUPS` variant groups and at least `NAMING_SHARE` of those groups have
# that value: the catalog's own other word for it ("chevron" where only zigzag products say it,
# "tote" where only handbags do, "sunflower" where only yellow ones do). Groups, not products,
# so that one design's own words do not name all of its values.
NAMING_GROUPS = 3
NAMING_SHARE = 0.9
# Query words whose document-named values are remembered (`CatalogAttributes.named`).
NAMING_CACHE = 65_536


class UnknownFilter(ValueError):
    """A filter on an attribute, or a value, that no live product has; the message lists what
    exists."""


def parse_filter(text: str, separator: str = "=") -> tuple[str, str]:
    """`("color", "red")` from `color=red` (the API's `color:red` with separator ":"); a
    ValueError naming the expected form otherwise."""
    name, found, value = text.partition(separator)
    if not found or not name.strip() or not value.strip():
        raise ValueError(f"filter {text!r} is not NAME{separator}VALUE (e.g. color{separator}red)")
    return name.strip(), value.strip()


def _text(values: pd.Series) -> pd.Series:
    """Attribute values as stripped text, <NA> where absent or blank."""
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _attribute_table(texts: Sequence[str]) -> pd.DataFrame:
    """Attributes JSON texts as a table: a text column per attribute search reads (by its feed
    name), <NA> where a text lacks it. One JSON parse for all texts (one per text only when
    some text is not JSON); a text that is not an object has no attributes."""
    try:
        parsed = json.loads("[" + ",".join(text or "{}" for text in texts) + "]")
    except ValueError:
        parsed = [_loads(text) for text in texts]
    frame = pd.DataFrame.from_records(
        [item if isinstance(item, dict) else {} for item in parsed], index=range(len(texts))
    )
    table = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        name = attribute_name(str(column))
        if name not in READ:
            continue
        values = _text(frame[column])
        # Two spellings of one name (`colour`, `color`): the first that has a value.
        table[name] = table[name].fillna(values) if name in table else values
    return table


def _money(text: pd.Series) -> np.ndarray:
    """Prices from text such as `12.50`, `$1,299.00`, `1.299,00 €` or `15.00 USD`
    (`catalog.prices`); NaN when not one. Plain decimals are read vectorised, each distinct
    other text once."""
    values = text.astype("string")
    plain = values.str.fullmatch(r"\d+(?:\.\d+)?").fillna(False).to_numpy(dtype=bool)
    amounts = pd.to_numeric(values.where(plain), errors="coerce").to_numpy(
        dtype=float, na_value=np.nan
    )
    written = ~plain & values.notna().to_numpy(dtype=bool)
    if written.any():
        codes, distinct = pd.factorize(values[written])
        amounts[written] = np.array([*map(_amount_or_nan, distinct)], dtype=float)[codes]
    return amounts


def _amount_or_nan(text: str) -> float:
    try:
        return read_amount(text)
    except ValueError:
        return np.nan


class Attribute:
    """One filterable attribute over the catalog's rows: `codes` (normalised value per row, -1
    without one), `raw` (the shop's spelling per row, -1 without), their texts, and `labels`
    (per normalised value, the spelling most products use)."""

    def __init__(self, name: str, raw_codes: np.ndarray, raw_values: Sequence[str]):
        self.name = name
        self.raw = raw_codes.astype(np.int32)
        self.raw_values = list(raw_values)
        normalised = [normalised_value(name, v) for v in self.raw_values]
        norm_of_raw, distinct = pd.factorize(pd.Series(normalised, dtype=object))
        norm_of_raw = np.append(norm_of_raw, -1).astype(np.int32)  # raw -1 maps to -1
        self.codes = norm_of_raw[self.raw]
        self.lookup = {str(value): code for code, value in enumerate(distinct)}
        uses = np.bincount(self.raw[self.raw >= 0], minlength=len(self.raw_values))
        self.labels = [""] * len(distinct)
        for raw in np.argsort(-uses, kind="stable")[::-1]:  # the most used spelling last wins
            self.labels[norm_of_raw[raw]] = self.raw_values[raw]
        self.counts = np.bincount(self.codes[self.codes >= 0], minlength=len(distinct))

    def known(self) -> str:
        """The values the catalog has, most used first (at most `LISTED`)."""
        order = np.argsort(-self.counts, kind="stable")[:LISTED]
        return ", ".join(self.labels[i] for i in order)

    def shown(self, row: int) -> str | None:
        raw = int(self.raw[row])
        return self.raw_values[raw] if raw >= 0 else None

    @functools.cached_property
    def _words(self) -> tuple[list[frozenset[str]], dict[str, list[int]]]:
        """Each normalised value's words, and word -> the values that have it."""
        return _word_index(list(self.lookup))

    @functools.cached_property
    def _raw_words(self) -> tuple[list[frozenset[str]], dict[str, list[int]]]:
        """As `_words`, for the shop's own spellings."""
        return _word_index(self.raw_values)

    def named_by(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Which values the query's `words` (`query_words`) name: per normalised value and per
        shop spelling, True when all of the value's words are among them, or a run of them is
        another spelling of it ("crimson" names red). A value whose words are part of another
        named one ("blue" beside "light blue") is left out."""
        present = set(words)
        value_words, having = self._words
        named = {
            code
            for word in present
            for code in having.get(word, ())
            if value_words[code] <= present
        }
        for length in range(1, PHRASE_WORDS + 1):
            for start in range(len(words) - length + 1):
                phrase = " ".join(words[start : start + length])
                code = self.lookup.get(normalised_value(self.name, phrase))
                if code is not None:
                    named.add(code)
        family = np.zeros(len(self.labels) + 1, dtype=bool)  # the last: no value
        family[[c for c in named if not any(value_words[c] < value_words[o] for o in named)]] = True
        raw_words, raw_having = self._raw_words
        spelled = {c for w in present for c in raw_having.get(w, ()) if raw_words[c] <= present}
        exact = np.zeros(len(self.raw_values) + 1, dtype=bool)
        exact[[c for c in spelled if not any(raw_words[c] < raw_words[o] for o in spelled)]] = True
        return family, exact


def _value_words(value: str) -> list[str]:
    """A value's or a query's words as values are matched: casefolded, `-` and `_` splitting."""
    return words_of(SEPARATORS.sub(" ", str(value).casefold()))


def _word_index(values: Sequence[str]) -> tuple[list[frozenset[str]], dict[str, list[int]]]:
    """Each value's words, and word -> the positions of the values that have it."""
    words = [frozenset(_value_words(value)) for value in values]
    having: dict[str, list[int]] = {}
    for code, value_words in enumerate(words):
        for word in value_words:
            having.setdefault(word, []).append(code)
    return words, having


def query_words(text: str) -> list[str]:
    """The words of a query text, in order, as `Attribute.named_by` reads them."""
    return _value_words(text) if text else []


def _codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), [str(v) for v in distinct]


class CatalogAttributes:
    """The release's products' attributes as arrays (one row per product, in table order):
    filterable `attributes`, variant `groups`, `available`, the price a shopper pays (`prices`)
    and the regular price beside a sale price (`list_prices`, NaN when none)."""

    def __init__(self, products: pd.DataFrame):
        count = len(products)
        self.product_ids = products["product_id"].astype(str).to_numpy()
        texts = (
            products["attributes"].fillna("{}").astype(str)
            if "attributes" in products
            else pd.Series(["{}"] * count)
        )
        # Parsed once per distinct attributes text: products often repeat theirs.
        inverse, distinct = pd.factorize(texts)
        inverse = np.asarray(inverse, dtype=np.int64)
        table = _attribute_table(list(distinct))

        def column(name: str) -> pd.Series:
            return table[name] if name in table else pd.Series(pd.NA, table.index, "string")

        def per_row(name: str) -> tuple[np.ndarray, list[str]]:
            codes, spellings = _codes(column(name))
            return codes[inverse], spellings

        self.attributes: dict[str, Attribute] = {}
        for name in FILTERABLE:
            if name == "brand" and "brand" in products:
                raw, spellings = _codes(_text(products["brand"]))
            else:
                raw, spellings = per_row(name)
            if spellings:
                self.attributes[name] = Attribute(name, raw, spellings)

        group_raw, self.group_ids = per_row("group_id")
        alone = group_raw < 0  # a product without group_id is its own group
        self.groups = np.where(alone, len(self.group_ids) + np.cumsum(alone) - 1, group_raw)
        self._order = np.argsort(self.groups, kind="stable")
        self._starts = np.searchsorted(
            self.groups[self._order], np.arange(int(self.groups.max(initial=-1)) + 2)
        )
        self.grouped = len(self.group_ids) < int((~alone).sum())
        # Query word -> the values its documents name (`_named_by_word`).
        self._by_word: dict[str, dict[str, int]] = {}

        codes, written = per_row("availability")
        states = [normalised_value("availability", v).replace(" ", "_") for v in written]
        self.availability = np.array([*states, None], dtype=object)[codes]  # -1: None
        self.available = ~np.array([s in UNAVAILABLE for s in [*states, None]], dtype=bool)[codes]

        price = (
            pd.to_numeric(products["price"], errors="coerce").to_numpy(dtype=float)
            if "price" in products
            else np.full(count, np.nan)
        )
        sale = _money(column("sale_price"))[inverse]
        listed = _money(column("list_price"))[inverse]
        on_sale = np.isfinite(sale) & ~(sale >= price)  # a sale price at or above price is none
        self.prices = np.where(on_sale, sale, price)
        listed = np.where(on_sale, price, listed)
        self.list_prices = np.where(listed > self.prices, listed, np.nan)

    def mask(self, filters: Sequence[tuple[str, str]]) -> np.ndarray | None:
        """Rows passing every named attribute (values of one name are alternatives: `color=red`
        and `color=blue` pass either); None without filters. UnknownFilter names what exists."""
        wanted: dict[str, list[int]] = {}
        for name, value in filters:
            key = attribute_name(name)
            attribute = self.attributes.get(key)
            if attribute is None:
                names = ", ".join(self.attributes) or "none"
                raise UnknownFilter(
                    f"no live product has attribute {name!r} to filter on; filterable: {names}"
                )
            code = attribute.lookup.get(normalised_value(key, value))
            if code is None:
                raise UnknownFilter(
                    f"no live product has {key} {value!r}; known {key} values: {attribute.known()}"
                )
            wanted.setdefault(key, []).append(code)
        if not wanted:
            return None
        keep = np.ones(len(self.product_ids), dtype=bool)
        for key, codes in wanted.items():
            attribute = self.attributes[key]
            passing = np.zeros(len(attribute.labels) + 1, dtype=bool)  # the last: no value
            passing[codes] = True
            keep &= passing[attribute.codes]
        return keep

    def facets(self, rows: np.ndarray) -> dict[str, dict[str, int]]:
        """Per attribute, the products among `rows` with each value (as the shop writes it),
        most first; every attribute the catalog has is a key, with {} when none of `rows` has it."""
        counted = {}
        for name, attribute in self.attributes.items():
            codes = attribute.codes[rows]
            counts = np.bincount(codes[codes >= 0], minlength=len(attribute.labels))
            order = np.argsort(-counts, kind="stable")
            counted[name] = {attribute.labels[i]: int(counts[i]) for i in order if counts[i]}
        return counted

    def members(self, row: int) -> np.ndarray:
        """The rows of `row`'s group, itself included."""
        group = int(self.groups[row])
        return self._order[self._starts[group] : self._starts[group + 1]]

    def named(
        self,
        words: Sequence[str],
        documents_with: Callable[[str], np.ndarray] | None = None,
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per attribute whose values the query's `words` (`query_words`) name, which ones
        (`Attribute.named_by`: per normalised value, per shop spelling); {} when none. With
        `documents_with` (a word -> the rows whose documents have it: the lexical index), a
        word that is no value's word also names the value its products have
        (`named_by_documents`)."""
        if not words:
            return {}
        named = {}
        for name, attribute in self.attributes.items():
            family, exact = attribute.named_by(words)
            if family.any() or exact.any():
                named[name] = (family, exact)
        if documents_with is None:
            return named
        for word in dict.fromkeys(words):
            if word in self._value_words:
                continue
            for name, code in self._named_by_word(word, documents_with).items():
                attribute = self.attributes[name]
                family, exact = named.get(name) or (
                    np.zeros(len(attribute.labels) + 1, dtype=bool),
                    np.zeros(len(attribute.raw_values) + 1, dtype=bool),
                )
                family = family.copy()
                family[code] = True
                named[name] = (family, exact)
        return named

    @functools.cached_property
    def _value_words(self) -> frozenset[str]:
        """Every word of every attribute value, normalised or as the shop spelled it."""
        return frozenset(
            word
            for attribute in self.attributes.values()
            for index in (attribute._words, attribute._raw_words)
            for word in index[1]
        )

    def _named_by_word(self, word: str, documents_with: Callable[[str], np.ndarray]) -> dict:
        """`named_by_documents` of the rows whose documents have `word`, remembered (safe for
        the server's threads: a lookup never depends on an entry another may clear)."""
        named = self._by_word.get(word)
        if named is None:
            named = self.named_by_documents(documents_with(word))
            if len(self._by_word) >= NAMING_CACHE:
                self._by_word.clear()
            self._by_word[word] = named
        return named

    def named_by_documents(self, rows: np.ndarray) -> dict[str, int]:
        """Attribute name -> the value (normalised code) that at least `NAMING_SHARE` of the
        variant groups among `rows` have, when they are at least `NAMING_GROUPS` groups."""
        groups = self.groups[rows]
        distinct = np.unique(groups)
        if len(distinct) < NAMING_GROUPS:
            return {}
        named = {}
        for name, attribute in self.attributes.items():
            span = len(attribute.labels) + 1
            pairs = np.unique(groups * span + attribute.codes[rows] + 1)
            codes = pairs % span - 1
            counts = np.bincount(codes[codes >= 0], minlength=len(attribute.labels))
            top = int(np.argmax(counts)) if len(counts) else 0
            if len(counts) and counts[top] >= NAMING_SHARE * len(distinct):
                named[name] = top
        return named

    def naming(
        self, rows: np.ndarray, named: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Per row, how well its values match the `named` ones: 2 per attribute whose value
        the query names (any spelling of it), 1 more where it is the shop's own spelling (a
        query for "navy" prefers Navy to Cobalt, both blue)."""
        strength = np.zeros(len(rows), dtype=np.int64)
        for name, (family, exact) in named.items():
            attribute = self.attributes[name]
            strength += 2 * family[attribute.codes[rows]] + exact[attribute.raw[rows]]
        return strength

    def named_share(
        self, rows: np.ndarray, named: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Per row, the share of the attributes whose values the query names (`named`) on which
        it has a named value (any spelling: Crimson has the red a query names); zeros when
        the query names none."""
        share = np.zeros(len(rows))
        for name, (family, _) in named.items():
            share += family[self.attributes[name].codes[rows]]
        return share / max(len(named), 1)

    def offered_share(
        self,
        rows: np.ndarray,
        named: dict[str, tuple[np.ndarray, np.ndarray]],
        offered: np.ndarray,
    ) -> np.ndarray:
        """As `named_share`, per row's variant group: the share of the named attributes on which
        some variant of its group that passes `offered` (a mask over all rows: the filters and
        availability of the answer) has a named value. "orange midi dress" asks whether the
        midi dress comes in orange, which its blue variant's row answers as well as the orange
        one's."""
        if not named or not len(rows):
            return self.named_share(rows, named)
        groups, inverse = np.unique(self.groups[rows], return_inverse=True)
        starts, ends = self._starts[groups], self._starts[groups + 1]
        lengths = ends - starts
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        members = self._order[np.repeat(starts, lengths) + offsets]
        owner = np.repeat(np.arange(len(groups)), lengths)
        kept = offered[members] | np.isin(members, rows)
        members, owner = members[kept], owner[kept]
        share = np.zeros(len(groups))
        for name, (family, _) in named.items():
            has = np.zeros(len(groups), dtype=bool)
            np.logical_or.at(has, owner, family[self.attributes[name].codes[members]])
            share += has
        return (share / len(named))[inverse]

    def one_per_group(
        self,
        ranked: list[tuple[int, float]],
        k: int,
        allowed: np.ndarray | None,
        named: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> list[tuple[int, float, np.ndarray]]:
        """The first `k` groups of a ranked list, best first: each group's variant, its score
        (the group's best) and the group's other rows that pass `allowed`. The variant is the
        group's best-ranked row unless a row passing `allowed` matches the query's `named`
        values (`named`, `naming`) better: then the best-ranked (else first) of the best."""
        position = {row: at for at, (row, _) in enumerate(ranked)} if named else {}
        chosen, seen = [], set()
        for row, score in ranked:
            group = int(self.groups[row])
            if group in seen:
                continue
            seen.add(group)
            members = self.members(row)
            if allowed is not None:
                members = members[allowed[members] | (members == row)]
            if named and len(members) > 1:
                strength = self.naming(members, named)
                best = members[strength == strength.max()]
                if row not in best:
                    row = min(best.tolist(), key=lambda r: (position.get(r, len(ranked)), r))
            chosen.append((row, score, members[members != row]))
            if len(chosen) == k:
                break
        return chosen

    def variant(self, row: int, other: int) -> dict:
        """Another variant of `row`'s product: its id, price and the attributes whose values
        differ from `row`'s (as the shop wrote them)."""
        described = {"product_id": str(self.product_ids[other]), **self.offer(other)}
        del described["group_id"]
        for name, attribute in self.attributes.items():
            if attribute.codes[other] != attribute.codes[row]:
                described[name] = attribute.shown(other)
        return described

    def offer(self, row: int) -> dict:
        """What a result shows of the product's offer: its group, the price paid, the list
        price beside a sale price, availability (None when the feed gave none)."""
        group = int(self.groups[row])
        price, listed = self.prices[row], self.list_prices[row]
        return {
            "group_id": self.group_ids[group] if group < len(self.group_ids) else None,
            "price": float(price) if np.isfinite(price) else None,
            "list_price": float(listed) if np.isfinite(listed) else None,
            "availability": self.availability[row],
        }
