"""Deterministic episode streams from a recipe's `data` section, and the preservation text.

`EpisodeStream.batch(step, n)` returns the same episodes for the same (seed, step), so an interrupted
run resumes exactly. Sources:

* `chats`: a generated chat (`train/chats.py`) with its small talk drawn from the recipe's LoCoMo
  conversations (when given) and a built-in pool; questions about its facts, asked in the official
  LoCoMo prompt or as a plain chat question, and continuations (one more small-talk turn).
* `locomo`: a real conversation cut at a random message: its history (what fits), the QA pairs whose
  evidence lies inside it (official prompt), and its next message as a continuation.
"""

from __future__ import annotations

import random

from ..data.locomo import load_locomo, locomo_messages, locomo_plain_texts
from ..eval.locomo import DATE_HINT, QA_PROMPT
from .chats import SMALL_TALK, generate_chat
from .config import DataConfig
from .episode import Episode, Query


def stable_seed(*key) -> int:
    """A seed from a key, identical in every process (unlike `hash`, which is salted per process)."""
    return random.Random(repr(key)).randrange(2**31)


def ask(question: str, official: bool = True, category: int = 4) -> str:
    """A question as `deltamem eval locomo` asks it (`official`: the LoCoMo prompt, with the date hint
    for temporal questions), or as a plain chat question."""
    if category == 2:
        question += DATE_HINT
    return QA_PROMPT.format(question) if official else question


class EpisodeStream:
    def __init__(self, cfg: DataConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.names = [n for n in sorted(cfg.sources) if cfg.sources[n] > 0]
        self.weights = [cfg.sources[n] for n in self.names]
        self.locomo: list[dict] = []
        self.small_talk = list(SMALL_TALK)
        if cfg.locomo_conversations:
            self.locomo = [s for s in load_locomo(cfg.locomo_path) if s["sample_id"] in cfg.locomo_conversations]
            missing = sorted(set(cfg.locomo_conversations) - {s["sample_id"] for s in self.locomo})
            if missing:
                raise ValueError(f"data.locomo_conversations: {missing} are not in {cfg.locomo_path}")
            self.small_talk += [m["content"] for s in self.locomo for m in locomo_messages(s)
                                if len(m["content"].split()) <= 30]
        self.conversations = [s for s in self.locomo if len(locomo_messages(s)) >= 2]  # a history and a next turn
        if "locomo" in self.names and not self.conversations:
            raise ValueError(f"data.locomo_conversations: none of {cfg.locomo_conversations} has two turns or more")

    def batch(self, step: int, n: int) -> list[Episode]:
        return [self.episode(stable_seed(self.seed, step, i)) for i in range(n)]

    def episode(self, seed: int) -> Episode:
        rng = random.Random(seed)
        kind = rng.choices(self.names, self.weights)[0]
        return self._chat(rng) if kind == "chats" else self._locomo(rng)

    def _window(self, rng: random.Random) -> int:
        return rng.randint(*self.cfg.window_tokens) if rng.random() < self.cfg.window else 0

    def _chat(self, rng: random.Random) -> Episode:
        c = self.cfg
        sample = generate_chat(rng, tuple(c.facts), tuple(c.sessions), tuple(c.turns), self.small_talk)
        history = locomo_messages(sample)
        qa = sample["qa"]
        queries = []
        for _ in range(c.queries):
            if not qa or rng.random() < c.continuation:
                last = history[-1]
                other = [m for m in history if m["name"] != last["name"]] or [last]
                nxt = {**rng.choice(other), "content": rng.choice(self.small_talk)}
                queries.append(Query(None, {k: nxt[k] for k in ("role", "content", "name", "timestamp")},
                                     self._window(rng)))
            else:
                q = rng.choice(qa)
                queries.append(Query(ask(q["question"], official=rng.random() < 0.5), q["answer"],
                                     self._window(rng)))
        return Episode(history, queries, "chats")

    def _locomo(self, rng: random.Random) -> Episode:
        sample = rng.choice(self.conversations)
        msgs = locomo_messages(sample)
        end = rng.randint(min(8, len(msgs) - 1), len(msgs) - 1)
        start = max(0, end - 80)  # the encoder keeps what fits max_write_tokens from the end
        index = {m.get("dia_id"): i for i, m in enumerate(msgs)}
        qa = [q for q in sample.get("qa", []) if q.get("category") in (1, 2, 3, 4) and "answer" in q
              and (ev := [index[e] for e in q.get("evidence", []) if e in index]) and start <= min(ev) and max(ev) < end]
        history = [{k: v for k, v in m.items() if k != "dia_id"} for m in msgs[start:end]]
        queries = []
        for _ in range(self.cfg.queries):
            if not qa or rng.random() < self.cfg.continuation:
                nxt = {k: v for k, v in msgs[end].items() if k != "dia_id"}
                queries.append(Query(None, nxt, self._window(rng)))
            else:
                q = rng.choice(qa)
                queries.append(Query(ask(q["question"], True, q["category"]), str(q["answer"]), self._window(rng)))
        return Episode(history, queries, "locomo")


def preservation_rows(tokenizer, renderer, cfg: DataConfig, tokens: int, chat_share: float, seed: int) -> list[list[int]]:
    """Rows of exactly `tokens` tokens for the preservation term: plain text of the recipe's LoCoMo
    conversations and, a `chat_share` of them, user/assistant exchanges of their turns."""
    plain = []
    for text in locomo_plain_texts(cfg.locomo_path, cfg.locomo_conversations):
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        plain += [ids[i:i + tokens] for i in range(0, len(ids) - tokens + 1, tokens)]
    chat = []
    for s in load_locomo(cfg.locomo_path):
        if s["sample_id"] not in cfg.locomo_conversations:
            continue
        msgs = locomo_messages(s)
        for a, b in zip(msgs[::2], msgs[1::2]):
            ids = renderer.system_ids + renderer.encode(renderer.message({"role": "user", "content": a["content"]})) \
                + renderer.encode(renderer.message({"role": "assistant", "content": b["content"]}))
            if len(ids) >= tokens:
                chat.append(ids[-tokens:])
    if not plain and not chat:
        raise ValueError(f"preserve.tokens={tokens}: no row that long in {cfg.locomo_conversations}")
    rng = random.Random(seed)
    n = max(len(plain), len(chat))
    rows = [rng.choice(chat) if chat and (not plain or rng.random() < chat_share) else rng.choice(plain)
            for _ in range(n)]
    return rows
