"""Text cleaning for feed values. Which fields make up the embedded text is decided in SQL
(`dbt_like_sql/models/marts/product_documents.sql`)."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata

MAX_TITLE_CHARS = 300
MAX_DESCRIPTION_CHARS = 2000

_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BLOCK_TAG = re.compile(r"<\s*/?\s*(br|p|div|li|ul|ol|tr|h[1-6])\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]*>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)


def clean_text(value: object, max_chars: int = MAX_DESCRIPTION_CHARS) -> str:
    """Plain, normalised text from a feed value.

    HTML tags are stripped (script and style bodies dropped), entities unescaped, unicode NFKC
    normalised, control characters removed, whitespace collapsed, and the result truncated at a
    word boundary to `max_chars`. None and NaN become "".
    """
    if value is None or (isinstance(value, float) and value != value):
        return ""
    text = str(value)
    text = _SCRIPT_OR_STYLE.sub(" ", text)
    text = _BLOCK_TAG.sub(" ", text)
    text = _ANY_TAG.sub(" ", text)
    # Unescape after stripping so "&lt;b&gt;" stays visible text, not a new tag.
    text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return truncate(text, max_chars)


def truncate(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars`, at the last word boundary when there is one."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip()


def text_key(text: str) -> str:
    """The content key of a text: its sha256, used to store and find its embedding."""
    return hashlib.sha256(text.encode()).hexdigest()


def words_of(text: object) -> list[str]:
    """The casefolded words of a text (none for a non-string or empty one)."""
    return _WORD.findall(str(text).casefold()) if isinstance(text, str) and text else []
