"""What every suite yields: conversations (a history of chat messages) and the items asked after them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass
class Item:
    """One question asked after the whole history.

    `question` is the text put in the prompt (with any instructions or hints);
    `query` the bare question a retriever searches with (defaults to `question`);
    `answers` the gold answers; `match` says how a prediction is scored against
    them ("locomo": the official LoCoMo rules, "any": one gold answer appears in
    the normalised prediction, "all": the fraction of gold answers that appear,
    "label": the first number is the gold label, "contains": one gold answer
    appears as whole words in the normalised prediction).
    """

    id: str
    question: str
    answers: list[str]
    category: int | str
    query: str = ""
    match: str = "locomo"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.query = self.query or self.question


@dataclass
class Conversation:
    """A history written (or shown) once, then its items asked one by one, read-only."""

    id: str
    history: list[dict]
    items: list[Item]

    def digest(self) -> str:
        """Hash of the history: keys the per-conversation caches (memory states, summaries)."""
        return hashlib.sha256(json.dumps(self.history, sort_keys=True).encode()).hexdigest()[:16]
