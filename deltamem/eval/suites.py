"""The evaluation suites: where their data comes from, how they load, how an answer is scored."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .items import Conversation, Item

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
DEFAULT_DATA = {
    "locomo": "locomo/locomo_dev.json",
    "mab-cr": "memoryagentbench/conflict_resolution_dev.json",
    "general": "locomo/locomo_dev.json",  # plain text for perplexity; built-in text when absent
}


@dataclass
class Suite:
    name: str
    description: str
    metric: str  # what the headline score means

    def default_data(self, out_dir: str, seed: int = 0) -> str | None:
        if self.name == "mab-synth":
            return os.path.join(out_dir, f"mab_synth_seed{seed}.json")
        rel = DEFAULT_DATA.get(self.name)
        if rel is None:
            return None
        for root in (Path("..") / "shared" / "data", SHARED):  # the project root's ../shared, from cwd or package
            if (root / rel).exists():
                return os.path.normpath(root / rel)
        return None

    def load(self, data: str | None, seed: int = 0) -> list[Conversation]:
        if self.name == "locomo":
            from .locomo import load_conversations

            _need(data, self.name)
            return load_conversations(data)
        if self.name == "mab-cr":
            from .mab import load_conflict_resolution

            _need(data, self.name)
            return load_conflict_resolution(data)
        if self.name == "synthetic":
            from .synthetic import heldout_conversations

            return heldout_conversations(seed=seed)
        if self.name == "mab-synth":
            from .mab import load_synthetic, write_synthetic

            if not os.path.exists(data):
                write_synthetic(data, seed=seed)
            return load_synthetic(data)
        from .general import load_general

        return load_general(data)


def _need(data: str | None, suite: str) -> None:
    if not data:
        raise FileNotFoundError(f"suite {suite}: no data file found at the default location "
                                f"(../shared/data/{DEFAULT_DATA[suite]}); pass --data PATH")
    if not os.path.exists(data):
        raise FileNotFoundError(f"suite {suite}: data file {data} does not exist")


SUITES = {s.name: s for s in (
    Suite("locomo", "LoCoMo QA after the whole conversation (official stemmed F1 and category rules)", "F1"),
    Suite("mab-cr", "MemoryAgentBench conflict resolution (FactConsolidation), normalised substring accuracy",
          "accuracy"),
    Suite("mab-synth", "synthetic MemoryAgentBench competencies (RULER NIAH, variable tracking, ICL, spread facts)",
          "accuracy"),
    Suite("synthetic", "held-out synthetic chats (names, values, statements and questions unseen in training): "
          "facts among filler and updated facts, one question each, normalised containment of the answer",
          "accuracy"),
    Suite("general", "general ability: plain-text perplexity and a small QA set, with and without memory",
          "accuracy"),
)}


def answer_text(reply: str, item: Item) -> str:
    """The answer that is scored: LoCoMo replies get the official clean-up, others are kept as they are."""
    if item.match == "locomo":
        from .locomo import postprocess

        return postprocess(reply, int(item.category), item.meta.get("options"))
    return reply


def score_item(prediction: str, item: Item) -> float:
    """The item's score in [0, 1] by its match rule."""
    if item.match == "locomo":
        from .locomo import score

        return score(prediction, item.answers[0], int(item.category))
    if item.match == "contains":
        from .synthetic import contains_score

        return contains_score(prediction, item.answers)
    from .mab import substring_score

    return substring_score(prediction, item.answers, item.match)


def target_text(item: Item) -> str | None:
    """The gold reply whose cross-entropy is measured (`answer_ce`): the first gold answer (LoCoMo
    category 3: its text before `;`, as scored; "all" items: every answer, comma-separated). None for
    LoCoMo category 5, whose right reply is an option letter, not the gold text."""
    if item.match == "locomo":
        cat = int(item.category)
        if cat == 5:
            return None
        return item.answers[0].split(";")[0].strip() if cat == 3 else item.answers[0]
    if item.match == "all":
        return ", ".join(item.answers)
    return item.answers[0] if item.answers else None


def select(convs: list[Conversation], ids: list[str] | None, limit: int | None) -> list[Conversation]:
    """The conversations named by `ids` (all when None), each cut to `limit` items taken round-robin over
    its categories (in file order within a category), so a small limit still covers every category."""
    if ids is not None:
        known = {c.id for c in convs}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ValueError(f"unknown conversation id(s) {', '.join(missing)}; known: {', '.join(sorted(known))}")
        convs = [c for c in convs if c.id in ids]
    if limit is None:
        return convs
    out = []
    for c in convs:
        groups: dict = {}
        for it in c.items:
            groups.setdefault(it.category, []).append(it)
        picked, queues = [], [list(g) for g in groups.values()]
        while len(picked) < limit and any(queues):
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop(0))
        order = {it.id: i for i, it in enumerate(c.items)}
        out.append(Conversation(c.id, c.history, sorted(picked, key=lambda it: order[it.id])))
    return out
