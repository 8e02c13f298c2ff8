"""`run_eval`: one suite x one method over the chosen conversations, resumable, with progress and ETA.

Each answered item is appended at once to `OUT/results.jsonl` under a key
(suite, method, condition, adapter or backbone, window when the method uses
it, conversation, item, generation settings); a rerun skips the keys already
there, so an interrupted run resumes and several methods can share one folder.
A conversation's history is processed once per method (written memory, summary
or prefilled prefix), then its items are answered in batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..adapter import adapter_fingerprint, get_delta_mem
from ..runtime.generate import GenerationConfig, stop_ids
from ..runtime.render import Renderer
from .engine import answer_batch
from .items import Conversation
from .methods import SYSTEM_PROMPT, Env, Prepared, build, check_method, label, uses_window
from .suites import SUITES, answer_text, score_item, select

RESULTS = "results.jsonl"


@dataclass
class EvalSpec:
    """One evaluation run. `limit` is per conversation; `conversations` None = the suite's default set."""

    suite: str
    method: str
    condition: str | None = None
    window: int = 1024
    data: str | None = None
    limit: int | None = None
    conversations: list[str] | None = None
    out: str | None = None
    max_new_tokens: int = 32
    batch_size: int = 8
    seed: int = 0
    summary_tokens: int = 128

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; choose one of {', '.join(SUITES)}")
        check_method(self.method, self.condition)
        for name, lo in (("window", 0), ("max_new_tokens", 1), ("batch_size", 1), ("summary_tokens", 16)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive int, got {self.limit!r}")
        self.out = self.out or os.path.join("runs", "eval", self.suite)


def read_results(out_dir: str) -> list[dict]:
    """The records of `OUT/results.jsonl` (a torn last line from an interrupted run is ignored)."""
    path = os.path.join(out_dir, RESULTS)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for n, line in enumerate(f):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def default_conversations(spec: EvalSpec, convs: list[Conversation]) -> list[str] | None:
    """LoCoMo: the conversations no training recipe uses (configs/train/*.yaml `locomo_conversations`,
    `preserve_conversations`); general: its built-in unrelated chat (LoCoMo conversations when named)."""
    if spec.conversations is not None:
        return spec.conversations
    if spec.suite == "general":
        return ["general"]
    if spec.suite != "locomo":
        return None
    from .locomo import training_conversations

    used = training_conversations()
    return [c.id for c in convs if c.id not in used]


def run_eval(model, tokenizer, spec: EvalSpec, encoder=None, progress: bool = True) -> dict:
    """Run `spec` (results appended to `spec.out`), then rewrite the folder's reports. Returns the summary."""
    from .report import write_reports

    suite = SUITES[spec.suite]
    data = spec.data or suite.default_data(spec.out, spec.seed)
    if spec.suite == "general" and spec.condition == "mismatched":
        raise ValueError("suite general has one (unrelated) history: the mismatched control does not apply")
    all_convs = suite.load(data, spec.seed)
    convs = select(all_convs, default_conversations(spec, all_convs), spec.limit)
    max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
    if spec.window + 256 + spec.max_new_tokens > max_positions:
        raise ValueError(f"window {spec.window} leaves no room for the question and answer in the model's "
                         f"{max_positions}-token context")
    os.makedirs(spec.out, exist_ok=True)
    dm = get_delta_mem(model)
    is_dm = spec.method == "delta-mem"
    env = Env(model, tokenizer, Renderer(tokenizer, SYSTEM_PROMPT), spec.window, os.path.join(spec.out, "cache"),
              adapter_fingerprint(model), dm.fingerprint or "backbone", GenerationConfig(max_new_tokens=spec.max_new_tokens),
              stop_ids(model, tokenizer), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
              max_positions, summary_tokens=spec.summary_tokens, encoder=encoder, progress=progress)
    win = spec.window if uses_window(spec.method, spec.condition) else None
    tag = label(spec.method, spec.condition)
    settings = f"n{spec.max_new_tokens}" + (f"-s{spec.summary_tokens}" if spec.method == "summary" else "")
    owner = env.adapter_id if is_dm else env.backbone_id

    def key(conv, item_id, text=""):  # the prompt's hash: an edited question is asked again
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return "|".join([spec.suite, tag, owner, f"w{win}" if win is not None else "w-", conv.id, item_id, digest,
                         settings])

    done = {r["key"] for r in read_results(spec.out)}
    todo = [(c, [it for it in c.items if key(c, it.id, it.question) not in done]) for c in convs]
    total = sum(len(t) for _, t in todo)
    bar = tqdm(total=total, desc=f"{spec.suite} {tag}" + (f" W={win}" if win is not None else ""), unit="q",
               disable=not progress)
    base = {"suite": spec.suite, "method": spec.method, "condition": spec.condition, "label": tag, "window": win,
            "adapter": env.adapter_id if is_dm else None, "backbone": env.backbone_id}
    path = os.path.join(spec.out, RESULTS)
    torn = os.path.exists(path) and os.path.getsize(path) > 0 and _last_byte(path) != b"\n"
    with open(path, "a") as f:
        if torn:  # an interrupted run left half a line: start a fresh one
            f.write("\n")
        def emit(rec):
            f.write(json.dumps(rec) + "\n")
            f.flush()

        for i, (conv, items) in enumerate(todo):
            ppl_key = key(conv, "perplexity")
            want_ppl = spec.suite == "general" and spec.method in ("none", "delta-mem") and ppl_key not in done
            if not items and not want_ppl:
                continue
            prep = Prepared(env, conv)
            partner = _partner(env, convs, all_convs, i) if spec.condition == "mismatched" else None
            ctx = build(env, spec.method, spec.condition, prep, partner)
            if ctx.prefix is None:  # does not fit: one record per item says so
                for it in items:
                    emit({**base, "key": key(conv, it.id, it.question), "conversation": conv.id, "item": it.id,
                          "category": it.category, "question": it.question, "gold": it.answers, "prediction": None,
                          "score": None, "skipped": ctx.note})
                bar.update(len(items))
                continue
            for b in range(0, len(items), spec.batch_size):
                batch = items[b:b + spec.batch_size]
                t0 = time.perf_counter()
                suffixes = [ctx.suffix(it) for it in batch]
                rows = answer_batch(ctx.prefix, suffixes, env.cfg, env.stop, env.pad_id)
                dt = (time.perf_counter() - t0) / len(batch)
                for it, toks in zip(batch, rows):
                    reply = tokenizer.decode(toks, skip_special_tokens=True).strip()
                    pred = answer_text(reply, it)
                    emit({**base, "key": key(conv, it.id, it.question), "conversation": conv.id, "item": it.id,
                          "category": it.category, "question": it.question, "gold": it.answers, "reply": reply,
                          "prediction": pred, "score": score_item(pred, it), "latency_s": round(dt, 4),
                          "prompt_tokens": ctx.prompt_tokens(it), "note": ctx.note})
                bar.update(len(batch))
            if want_ppl:
                emit({**base, "key": ppl_key, "conversation": conv.id, "item": "perplexity", "category": "perplexity",
                      **_perplexity(env, spec, prep, ctx, data)})
    bar.close()
    return write_reports([spec.out], spec.out)


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _partner(env: Env, convs: list[Conversation], all_convs: list[Conversation], i: int) -> Prepared:
    """The mismatched memory's conversation: the next selected one, or any other in the suite."""
    if len(convs) > 1:
        return Prepared(env, convs[(i + 1) % len(convs)])
    others = [c for c in all_convs if c.id != convs[i].id]
    if not others:
        raise ValueError("the mismatched control needs a second conversation in the suite")
    return Prepared(env, others[0])


def _perplexity(env: Env, spec: EvalSpec, prep: Prepared, ctx, data: str | None) -> dict:
    from .general import perplexity, plain_texts

    texts = plain_texts(data)
    state = ctx.prefix.state if spec.method == "delta-mem" else None
    return {"metric": "perplexity", **perplexity(env.model, env.tokenizer, texts, state)}
