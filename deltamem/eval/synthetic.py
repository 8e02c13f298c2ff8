"""The `synthetic` suite: held-out synthetic chats, asked one question each, scored by containment.

Built in-process from `deltamem.data.synthetic` with `split="heldout"`: the
names, values, statements and questions are disjoint from the ones training
draws, so a right answer has to come from the history, not from a memorised
pair. By default 48 conversations for a fixed seed (`--seed`, default 0):

* 32 `recall` chats (`synthetic_chats`): one person states 1-3 facts (job,
  pet, city, ...) among 2-6 filler exchanges; one question about one fact;
* 16 `update` chats (`fact_updates`): a fact, 0-4 filler exchanges, the same
  fact with a new value; the question asks for the latest value.

The question is asked as a plain chat message. A reply scores 1 when it
contains the gold value as whole words after normalising both sides
(lower-case, punctuation to spaces): "Mochi's bowl" contains "Mochi",
"maybe" does not contain "May".
"""

from __future__ import annotations

import string

from .items import Conversation, Item

CONVERSATIONS = 48
UPDATE_SHARE = 1 / 3  # of the conversations, fact updates; the rest are recall chats
FACTS_PER_CHAT = (1, 3)
FILLER_TURNS = (2, 6)
CATEGORY = {"synthetic": "recall", "update": "update"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def heldout_conversations(n: int = CONVERSATIONS, seed: int = 0) -> list[Conversation]:
    """`n` held-out conversations (a third of them fact updates, the rest recall chats), the same for the
    same `(n, seed)`; ids `recall-000`, ..., `update-000`, ..."""
    from ..data.synthetic import fact_updates, synthetic_chats

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    updates = round(n * UPDATE_SHARE) if n > 1 else 0
    episodes = synthetic_chats(n - updates, seed, split="heldout", facts_per_episode=FACTS_PER_CHAT,
                               filler_turns=FILLER_TURNS)
    episodes += fact_updates(updates, seed, split="heldout") if updates else []
    return conversations_from_episodes(episodes)


def conversations_from_episodes(episodes) -> list[Conversation]:
    """`deltamem.data.synthetic.Episode`s -> one conversation each (its history, one item: its question,
    scored by containment of its answer). Ids count per category: `recall-000`, `update-000`, ..."""
    out: list[Conversation] = []
    count: dict[str, int] = {}
    for ep in episodes:
        cat = CATEGORY.get(ep.kind, ep.kind)
        cid = f"{cat}-{count.get(cat, 0):03d}"
        count[cat] = count.get(cat, 0) + 1
        meta = {k: v for k, v in ep.meta.items() if k in ("attribute", "old", "values")}
        item = Item(f"{cid}:q0", ep.question, [ep.answer], cat, match="contains", meta=meta)
        out.append(Conversation(cid, [dict(m) for m in ep.history], [item]))
    return out


def _words(s: str) -> list[str]:
    return str(s).lower().translate(_PUNCT).split()


def contains_score(prediction: str, answers: list[str]) -> float:
    """1.0 when one gold answer's normalised words occur, contiguous and whole, in the normalised prediction."""
    pred = _words(prediction)
    for a in answers:
        gold = _words(a)
        if gold and any(pred[i:i + len(gold)] == gold for i in range(len(pred) - len(gold) + 1)):
            return 1.0
    return 0.0
