"""What each method puts in front of a question, built once per conversation (docs/design.md section 6).

Every method answers with the same backbone, system prompt, generation
settings and history budget `W` (tokens of history in the prompt):

| method | prompt holds | memory |
| --- | --- | --- |
| `none` | system + question | - |
| `window` | the last W tokens of history (whole messages) | - |
| `full` | the whole history, where it fits the context | - |
| `rag-bm25`, `rag-dense` | the best-ranked messages that fit W, in chronological order | - |
| `summary` | a rolling summary of the history by the backbone, then the last messages, within W | - |
| `delta-mem` `memory-only` | system + question | whole history written |
| `delta-mem` `window+memory` | as `window` | whole history written |
| `delta-mem` `full+memory` | as `full` (the paper's protocol) | whole history written |
| `delta-mem` `mismatched` | system + question | another conversation's history written |
| `delta-mem` `window+mismatched` | as `window` | another conversation's history written |
| `delta-mem` `full+mismatched` | as `full` | another conversation's history written |

The three mismatched conditions are the controls of `memory-only`, `window+memory` and `full+memory`: what a memory
gives whatever it holds (a format, a prior) shows in them too; only what it carries from this
conversation's history does not.

A conversation's memory state and summary are computed once and cached on
disk (keyed by the adapter or backbone and the history's hash), so other
conditions, windows and reruns reuse them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..adapter import MemoryState
from ..runtime.generate import GenerationConfig, PrefixCache, generate_tokens
from ..runtime.render import message_text
from .items import Conversation, Item

METHODS = ("none", "window", "full", "rag-bm25", "rag-dense", "summary", "delta-mem")
CONDITIONS = ("memory-only", "window+memory", "full+memory", "mismatched", "window+mismatched", "full+mismatched")
# the controls: the prompt of the condition they control, another conversation's memory
OWN = {"mismatched": "memory-only", "window+mismatched": "window+memory", "full+mismatched": "full+memory"}
MISMATCHED = tuple(OWN)
SYSTEM_PROMPT = "You are a helpful assistant with a long-term memory of earlier conversations."
SUMMARY_PROMPT = ("Summary of the conversation so far:\n{summary}\n\nNext part of the conversation:\n{turns}\n\n"
                  "Write an updated summary of the whole conversation in at most {words} words. Keep names, dates, "
                  "places, events and preferences.")


def check_method(method: str, condition: str | None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "delta-mem" and condition not in CONDITIONS:
        raise ValueError(f"--method delta-mem needs --condition, one of {', '.join(CONDITIONS)} (got {condition!r})")
    if method != "delta-mem" and condition is not None:
        raise ValueError(f"--condition applies to --method delta-mem only (got method {method!r})")


def uses_window(method: str, condition: str | None) -> bool:
    """Whether `W` changes what the method shows (others are run and cached once for every W)."""
    return method in ("window", "rag-bm25", "rag-dense", "summary") or condition in ("window+memory", "window+mismatched")


def label(method: str, condition: str | None) -> str:
    return f"delta-mem:{condition}" if condition else method


@dataclass
class Env:
    """Everything the methods share for one run: model, rendering, budgets, caches."""

    model: object
    tokenizer: object
    renderer: object
    window: int
    cache_dir: str
    adapter_id: str
    backbone_id: str
    cfg: GenerationConfig
    stop: set
    pad_id: int
    max_positions: int
    summary_tokens: int = 128
    summary_chunk_tokens: int = 2048
    encoder: object = None  # dense retriever's encode(texts); None = all-MiniLM-L6-v2
    progress: bool = True
    gen_ids: list = field(default_factory=list)

    def __post_init__(self):
        self.gen_ids = self.renderer.prompt([], None)[len(self.renderer.system_ids):]


@dataclass
class Context:
    """A method's view of one conversation: a shared prefix (cached KV) and per-question suffix tokens."""

    prefix: PrefixCache | None
    suffix: object  # item -> list[int]
    note: str = ""  # why the conversation is skipped (prefix None), or what was done
    prompt_tokens: object = None  # item -> int


class Prepared:
    """Per-conversation token ids of each history message, computed once."""

    def __init__(self, env: Env, conv: Conversation):
        self.conv = conv
        self.ids = [env.renderer.encode(env.renderer.message(m)) for m in conv.history]
        self.total = sum(len(x) for x in self.ids)

    def window(self, budget: int) -> list[int]:
        """Indices of the last messages that fit `budget` tokens together (whole messages)."""
        out, used = [], 0
        for i in range(len(self.ids) - 1, -1, -1):
            if used + len(self.ids[i]) > budget:
                break
            out.insert(0, i)
            used += len(self.ids[i])
        return out


def question_ids(env: Env, item: Item) -> list[int]:
    return env.renderer.encode(env.renderer.message({"role": "user", "content": item.question})) + env.gen_ids


def answer_ids(env: Env, text: str) -> list[int]:
    """A gold reply as the model would write it after the generation prompt: its tokens, then end of turn
    (as training's answer targets are)."""
    end = env.tokenizer.eos_token_id
    return env.renderer.encode(text) + ([end] if end is not None else [])


def build(env: Env, method: str, condition: str | None, prep: Prepared, partner: Prepared | None) -> Context:
    """The context of `method` for one conversation (writes memory / summarises on first use)."""
    r = env.renderer
    system = list(r.system_ids)

    def flat(indices):
        return [t for i in indices for t in prep.ids[i]]

    def shared(prefix, state=None, note=""):
        room = env.max_positions - env.cfg.max_new_tokens - len(prefix)
        worst = max((len(question_ids(env, it)) for it in prep.conv.items), default=0)
        if worst > room:
            return Context(None, None, f"prompt of {len(prefix) + worst} tokens does not fit the "
                                       f"{env.max_positions}-token context; skipped")
        pc = PrefixCache(env.model, prefix, state)
        return Context(pc, lambda it: question_ids(env, it), note, lambda it: pc.length + len(question_ids(env, it)))

    if method == "none":
        return shared(system)
    if method == "window":
        return shared(system + flat(prep.window(env.window)))
    if method == "full":
        return shared(system + flat(range(len(prep.ids))), note=f"history {prep.total} tokens")
    if method in ("rag-bm25", "rag-dense"):
        return _rag(env, method, prep, system)
    if method == "summary":
        text = rolling_summary(env, prep)
        msg = r.encode(r.message({"role": "user", "content": f"Summary of our earlier conversation: {text}"}))
        return shared(system + msg + flat(prep.window(max(env.window - len(msg), 0))))
    if condition in MISMATCHED:
        if partner is None:
            raise ValueError("the mismatched control needs a second conversation in the suite")
        own, state, note = OWN[condition], written_state(env, partner), f"memory of {partner.conv.id}"
    else:
        own, state, note = condition, written_state(env, prep), ""
    if own == "memory-only":
        return shared(system, state, note=note)
    if own == "window+memory":
        return shared(system + flat(prep.window(env.window)), state, note=note)
    return shared(system + flat(range(len(prep.ids))), state, note=note or f"history {prep.total} tokens")


def _rag(env: Env, method: str, prep: Prepared, system: list[int]) -> Context:
    from .retrieval import BM25Retriever, DenseRetriever, pack

    texts = [message_text(m) for m in prep.conv.history]
    retriever = BM25Retriever(texts) if method == "rag-bm25" else DenseRetriever(texts, env.encoder)
    lengths = [len(x) for x in prep.ids]
    pc = PrefixCache(env.model, system)
    picked: dict[str, list[int]] = {}

    def suffix(it: Item) -> list[int]:
        if it.id not in picked:
            picked[it.id] = pack(retriever.rank(it.query), lengths, env.window)
        return [t for i in picked[it.id] for t in prep.ids[i]] + question_ids(env, it)

    return Context(pc, suffix, "", lambda it: pc.length + len(suffix(it)))


# ---- cached per-conversation work ---------------------------------------------------------------
def written_state(env: Env, prep: Prepared) -> MemoryState:
    """The memory after writing the whole history (as `MemorySession.write` does), cached on disk."""
    from ..runtime.session import MemorySession

    path = os.path.join(env.cache_dir, f"state-{env.adapter_id}-{prep.conv.id}-{prep.conv.digest()}.safetensors")
    if os.path.exists(path):
        return MemoryState.load(path)
    sess = MemorySession(env.model, env.tokenizer, window_tokens=0, system_prompt=SYSTEM_PROMPT,
                         progress=env.progress)
    sess.write(prep.conv.history)
    sess.state.save(path)
    return sess.state


def rolling_summary(env: Env, prep: Prepared) -> str:
    """A summary of the history written by the bare backbone, updated chunk by chunk (`summary_chunk_tokens`
    of history at a time, at most `summary_tokens` tokens each time); cached on disk."""
    import json

    from tqdm.auto import tqdm

    budget = max(16, min(env.summary_tokens, env.window // 2))
    path = os.path.join(env.cache_dir, f"summary-{env.backbone_id}-{prep.conv.id}-{prep.conv.digest()}-"
                                       f"{budget}-{env.summary_chunk_tokens}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["summary"]
    chunks, cur, used = [], [], 0
    for m, ids in zip(prep.conv.history, prep.ids):
        if cur and used + len(ids) > env.summary_chunk_tokens:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(message_text(m))
        used += len(ids)
    if cur:
        chunks.append(cur)
    cfg = GenerationConfig(max_new_tokens=budget)
    summary = ""
    for lines in tqdm(chunks, desc=f"summary {prep.conv.id}", disable=not env.progress, leave=False):
        text = SUMMARY_PROMPT.format(summary=summary or "(nothing yet)", turns="\n".join(lines),
                                     words=max(8, budget * 3 // 4))
        ids = env.renderer.prompt([{"role": "user", "content": text}], None)
        new = [step[0] for step in generate_tokens(env.model, [ids], None, cfg, env.stop, env.pad_id)]
        new = [t for t in new if t is not None]
        summary = env.tokenizer.decode(new, skip_special_tokens=True).strip() or summary
    os.makedirs(env.cache_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"conversation": prep.conv.id, "summary": summary, "chunks": len(chunks)}, f)
    return summary
