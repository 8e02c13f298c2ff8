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

import torch
from tqdm.auto import tqdm

from ..data.locomo import load_locomo, locomo_messages, locomo_plain_texts
from ..eval.locomo import DATE_HINT, QA_PROMPT
from .chats import SMALL_TALK, general_questions, generate_chat
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


GENERAL_ROWS = 128


def general_rows(model, renderer, tokens: int, rows: int, seed: int, answer_tokens: int = 24,
                 batch: int = 32, progress: bool = False) -> list[list[int]]:
    """`rows` chats of exactly `tokens` tokens: short questions of general ability (`general_questions`),
    each answered greedily by the bare backbone (no memory is bound while it generates)."""
    rng = random.Random(seed)
    per_row = max(1, tokens // 24)
    questions = general_questions(rng, rows * per_row + per_row)
    pad = renderer.tokenizer.pad_token_id
    pad = pad if pad is not None else renderer.tokenizer.eos_token_id
    dev = next(model.parameters()).device
    answers: list[list[int]] = []
    for i in tqdm(range(0, len(questions), batch), desc="preserve.general: the backbone answers", disable=not progress):
        prompts = [renderer.prompt([], q) for q in questions[i:i + batch]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=answer_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=renderer.tokenizer.eos_token_id)
        for row in out[:, width:].tolist():
            end = row.index(renderer.tokenizer.eos_token_id) if renderer.tokenizer.eos_token_id in row else len(row)
            answers.append(row[:end])
    out_rows, cur = [], list(renderer.system_ids)
    for q, a in zip(questions, answers):
        reply = renderer.tokenizer.decode(a, skip_special_tokens=True).strip() or "I don't know."
        cur += renderer.encode(renderer.message({"role": "user", "content": q}))
        cur += renderer.encode(renderer.message({"role": "assistant", "content": reply}))
        if len(cur) >= tokens:
            out_rows.append(cur[-tokens:])
            cur = list(renderer.system_ids)
    if not out_rows:
        raise ValueError(f"preserve.tokens={tokens}: no general chat that long")
    return out_rows[:rows]


def preservation_rows(tokenizer, renderer, cfg: DataConfig, tokens: int, chat_share: float, seed: int,
                      general_share: float = 0.0, model=None, progress: bool = False) -> list[list[int]]:
    """Rows of exactly `tokens` tokens for the preservation term: plain text of the recipe's LoCoMo
    conversations and, a `chat_share` of them, user/assistant exchanges of their turns; with
    `general_share` > 0, that share are chats of general questions the backbone answers (`general_rows`)."""
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
    # distinct general chats: the backbone answers each (about 1 s per row on a CPU), a few hundred suffice
    general = general_rows(model, renderer, tokens, min(GENERAL_ROWS, max(1, round(general_share * n))), seed,
                           progress=progress) if general_share > 0 else []
    rows = []
    for _ in range(n):
        if general and rng.random() < general_share:
            rows.append(rng.choice(general))
        else:
            rows.append(rng.choice(chat) if chat and (not plain or rng.random() < chat_share) else rng.choice(plain))
    return rows
