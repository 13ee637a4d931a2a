"""The lexical retriever: BM25 over the product documents (bm25s), the keyword baseline every
shop knows and the one that catches exact words (brands, model numbers) embeddings blur."""

from __future__ import annotations

import logging
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

STOPWORDS = "en"
# English Snowball stemming: "shirts" finds "shirt", "striped" finds "stripes".
_STEMMER = Stemmer.Stemmer("english")
# bm25s logs each save/load at INFO; searches should not.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def word_tokens(texts: list[str]) -> list[list[str]]:
    """Each text's words as BM25 indexes and queries them: stop words out, English-stemmed."""
    return bm25s.tokenize(
        texts, stopwords=STOPWORDS, stemmer=_STEMMER, return_ids=False, show_progress=False
    )


class LexicalIndex:
    """BM25 scores of a query against every document, in document order."""

    def __init__(self, retriever: bm25s.BM25, size: int):
        self.retriever = retriever
        self.size = size

    @classmethod
    def build(cls, documents: list[str]) -> LexicalIndex:
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

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder))
        (folder / "size.txt").write_text(str(self.size))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        size = int((folder / "size.txt").read_text())
        return cls(bm25s.BM25.load(str(folder), mmap=False), size)
