"""Deterministic episode streams for training and validation, built from `sources`."""

from __future__ import annotations

import random

from .config import TrainConfig
from .sources import BANNED, CAPITALISED, FACTS, Episode, fact_updates, key_value, locomo_episodes, synthetic_chats


def filler_range(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """Filler turns per episode at `step`: grows linearly from `curriculum_start` to `filler_turns`."""
    if cfg.curriculum_steps <= 0:
        return tuple(cfg.filler_turns)
    f = min(1.0, step / cfg.curriculum_steps)
    lo = round(cfg.curriculum_start[0] + f * (cfg.filler_turns[0] - cfg.curriculum_start[0]))
    hi = round(cfg.curriculum_start[1] + f * (cfg.filler_turns[1] - cfg.curriculum_start[1]))
    return lo, max(lo, hi)


class EpisodeStream:
    """`batch(step)` returns the same episodes for the same (seed, step), so runs resume exactly."""

    def __init__(self, cfg: TrainConfig, words: tuple[str, ...] = (), kin_words: dict | None = None):
        for key in ("vocab_values", "blend_values"):
            if getattr(cfg, key) > 0 and len(words) < 3:
                raise ValueError(f"recipe key {key!r} > 0 needs a word list: build the stream with "
                                 "vocabulary_words(tokenizer)")
        if cfg.class_values > 0 and not kin_words:
            raise ValueError("recipe key 'class_values' > 0 needs class words: build the stream with "
                             "class_words(model, tokenizer)")
        self.cfg, self.words, self.kin_words = cfg, words, kin_words or {}
        names = sorted(cfg.sources)
        self.names = [n for n in names if cfg.sources[n] > 0]
        self.weights = [cfg.sources[n] for n in self.names]
        self.locomo: list[Episode] = []
        if "locomo" in self.names:
            from ..data.locomo import load_locomo

            self.locomo = locomo_episodes(load_locomo(cfg.locomo_path), cfg.locomo_conversations)

    def episode(self, seed: int, fillers: tuple[int, int], split: str = "train") -> Episode:
        rng = random.Random(seed)
        kind = rng.choices(self.names, self.weights)[0]
        s = rng.randrange(2**31)
        if kind == "synthetic":
            return synthetic_chats(1, s, split, tuple(self.cfg.facts_per_episode), fillers, **self._mix(split))[0]
        if kind == "updates":
            return fact_updates(1, s, split, fillers, **self._mix(split))[0]
        if kind == "key_value":
            return key_value(1, s, noise_turns=fillers)[0]
        return self.locomo[rng.randrange(len(self.locomo))]

    def _mix(self, split: str) -> dict:
        """Value and template mixture: the recipe's on the training split, none on the held-out one."""
        if split != "train":
            return {}
        c = self.cfg
        return {"novel": c.novel_values, "vocab": c.vocab_values, "words": self.words, "generic": c.generic_templates,
                "varied": c.varied_templates, "blend": c.blend_values, "kin": c.class_values,
                "kin_words": self.kin_words}

    def batch(self, step: int, n: int) -> list[Episode]:
        fillers = filler_range(self.cfg, step)
        return [self.episode(stable_seed(self.cfg.seed, step, i), fillers) for i in range(n)]


def plain_text_chunks(tokenizer, texts: list[str], n_tokens: int) -> list[list[int]]:
    """Token chunks of exactly `n_tokens` from plain `texts` (each text split on its own; tails dropped)."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        out += [ids[i:i + n_tokens] for i in range(0, len(ids) - n_tokens + 1, n_tokens)]
    return out


def chat_chunks(renderer, conversations: list[list[dict]], n_tokens: int) -> list[list[int]]:
    """Chat-template exchanges `[system, user: turn i, assistant: turn i + 1]` over consecutive turn pairs of
    each conversation, each cut to its last `n_tokens` tokens (shorter ones dropped): ordinary replies, which
    a memory of something else should leave as the backbone would write them."""
    out = []
    for msgs in conversations:
        for a, b in zip(msgs[::2], msgs[1::2]):
            ids = renderer.system_ids + renderer.encode(renderer.message({"role": "user", "content": a["content"]})) \
                + renderer.encode(renderer.message({"role": "assistant", "content": b["content"]}))
            if len(ids) >= n_tokens:
                out.append(ids[-n_tokens:])
    return out


def validation_set(cfg: TrainConfig, n: int, split: str = "train", words: tuple[str, ...] = (),
                   kin_words: dict | None = None) -> list[Episode]:
    """Episodes from the training distribution (final filler range) under a seed training never uses;
    `split="heldout"` uses unseen names, values and templates instead."""
    stream = EpisodeStream(cfg, words, kin_words)
    return [stream.episode(stable_seed("validation", split, cfg.seed, i), tuple(cfg.filler_turns), split)
            for i in range(n)]


def stable_seed(*key) -> int:
    """A seed from a key, identical in every process (unlike `hash`, which is salted per process)."""
    return random.Random(repr(key)).randrange(2**31)


def _word_tokens(tokenizer, min_len: int, max_len: int):
    """`(id, word)` for every token that is one space-prefixed real word ("Ġharbor") of `min_len`-`max_len`
    letters, held-out values and names removed (training on them would leak the held-out split)."""
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        w = text[1:]
        if text[:1] == " " and w.isascii() and w.isalpha() and min_len <= len(w) <= max_len and w.lower() not in BANNED:
            yield i, w


def vocabulary_words(tokenizer, min_len: int = 4, max_len: int = 10) -> tuple[str, ...]:
    """Lower-case real words that the tokenizer holds as one space-prefixed token, sorted, no held-out one."""
    return tuple(sorted({w.lower() for _, w in _word_tokens(tokenizer, min_len, max_len)}))


def class_words(model, tokenizer, k: int = 40) -> dict[str, tuple[str, ...]]:
    """For each fact attribute, the `k` real words nearest its training pool in the backbone's input
    embedding space ("dietitian", "surgeon" for a job): one space-prefixed token each, cased like the
    attribute's values, neither a pool value nor a held-out value or name, nor a word sharing a held-out
    value's stem ("pharmacists"), so the held-out split stays unseen."""
    import torch

    emb = model.get_input_embeddings().weight.detach().float()
    emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    pools = {v.lower() for attr in FACTS.values() for v in attr[0]}
    stems = [b for b in BANNED if len(b) >= 4]
    cands = {i: w for i, w in _word_tokens(tokenizer, 4, 12)
             if w.lower() not in pools and not any(w.lower().startswith(b) or b.startswith(w.lower()) for b in stems)}
    ids = torch.tensor(sorted(cands))
    upper = torch.tensor([cands[int(i)][0].isupper() for i in ids])
    out = {}
    for attr, (pool, *_) in FACTS.items():
        own = [t[0] for t in (tokenizer.encode(" " + v, add_special_tokens=False) for v in pool) if len(t) == 1]
        if not own:
            raise ValueError(f"no value of {attr!r} is one token: cannot place its class")
        cased = upper if attr in CAPITALISED else ~upper
        top = (emb[ids] @ emb[own].mean(0)).masked_fill(~cased, float("-inf")).topk(min(k, int(cased.sum()))).indices
        out[attr] = tuple(cands[int(ids[j])] for j in top)
    return out
