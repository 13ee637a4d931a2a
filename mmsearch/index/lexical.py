"""The lexical retriever: BM25 over the product documents (bm25s), the keyword baseline every
shop knows and the one that catches exact words (brands, model numbers) embeddings blur.

A product's lexical document is its embedded document plus the attribute values a shopper types
(colour, size, material, pattern, gender, age group, product type: `catalog.attributes`), so
"red" finds the red variant whose title does not say it. Colours match by family on both sides:
a colour value gains its family's name in the document ("Crimson" -> also "red") and a query's
colour word does in the query ("scarlet dress" also asks for "red").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from mmsearch.catalog.attributes import colour_families, lexical_terms

STOPWORDS = "en"
# English Snowball stemming: "shirts" finds "shirt", "striped" finds "stripes".
_STEMMER = Stemmer.Stemmer("english")
# bm25s logs each save/load at INFO; searches should not.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def word_tokens(texts: list[str]) -> list[list[str]]:
    """Each query text's words as BM25 reads them: stop words out, English-stemmed, and the
    family of each colour word the text names only by another name ("crimson" -> also "red")."""
    expanded = [" ".join([text, *colour_families(text)]) for text in texts]
    return bm25s.tokenize(
        expanded, stopwords=STOPWORDS, stemmer=_STEMMER, return_ids=False, show_progress=False
    )


def lexical_documents(
    documents: Sequence[str], attributes: Sequence[str | None] | None = None
) -> list[str]:
    """The texts BM25 indexes: each product's document followed by its attribute values
    (`catalog.attributes.lexical_terms` of its attributes JSON, in the same order)."""
    if attributes is None:
        return list(documents)
    return [
        " ".join(
            part for part in (document, lexical_terms(extra)) if isinstance(part, str) and part
        )
        for document, extra in zip(documents, attributes, strict=True)
    ]


class LexicalIndex:
    """BM25 scores of a query against every document, in document order."""

    def __init__(self, retriever: bm25s.BM25, size: int):
        self.retriever = retriever
        self.size = size

    @classmethod
    def build(
        cls, documents: Sequence[str], attributes: Sequence[str | None] | None = None
    ) -> LexicalIndex:
        """BM25 over the products' `lexical_documents` (documents and, when given, their
        attributes JSON texts, in product order)."""
        documents = lexical_documents(documents, attributes)
        retriever = bm25s.BM25()
        # An empty corpus or one without a single word still gets a (useless) index.
        corpus = [d if isinstance(d, str) and d.strip() else "-" for d in documents] or ["-"]
        retriever.index(
            bm25s.tokenize(corpus, stopwords=STOPWORDS, stemmer=_STEMMER, show_progress=False),
            show_progress=False,
        )
        return cls(retriever, len(documents))

    def scores(self, text: str) -> tuple[np.ndarray, float]:
        """(n_documents,) float32 BM25 scores (zeros when no query word is in the index) and the
        share of the query's words (stemmed, stopwords left out) that the index knows."""
        words = word_tokens([text])[0]
        known = [t for t in words if t in self.retriever.vocab_dict]
        if not known or not self.size:
            return np.zeros(self.size, dtype=np.float32), 0.0
        scores = np.asarray(self.retriever.get_scores(known), dtype=np.float32)[: self.size]
        return scores, len(known) / len(words)

    def documents_with(self, word: str) -> np.ndarray:
        """The documents (in document order) that have `word` as BM25 reads it (stemmed:
        "stripe" finds the documents that say "striped"); none for a stop word or a word no
        document has. A read of the word's postings: its cost is the documents that have it."""
        token = self.retriever.vocab_dict.get(_STEMMER.stemWord(word.casefold()))
        if token is None or not self.size:
            return np.empty(0, dtype=np.int64)
        postings = self.retriever.scores
        start, end = postings["indptr"][token], postings["indptr"][token + 1]
        rows = np.asarray(postings["indices"][start:end], dtype=np.int64)
        return rows[rows < self.size]

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder))
        (folder / "size.txt").write_text(str(self.size))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        size = int((folder / "size.txt").read_text())
        return cls(bm25s.BM25.load(str(folder), mmap=False), size)
