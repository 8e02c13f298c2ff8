"""`run_eval` and `evaluate`: one suite x one method over the chosen conversations, resumable, with progress.

Each answered item is appended at once to `OUT/results.jsonl` under a key
(suite, method, condition, adapter or backbone, window when the method uses
it, conversation, item, generation settings); a rerun skips the keys already
there, so an interrupted run resumes and several methods can share one folder.
A conversation's history is processed once per method (written memory, summary
or prefilled prefix), then its items are answered in batches. Each record holds
the reply, its score, and `answer_ce`: the teacher-forced mean cross-entropy
(nats per token) of the gold answer and the end-of-turn token, read exactly
where the reply is generated (after the same prefix, memory and question).

`run_eval` is the command's entry (it also rewrites the folder's reports);
`evaluate` is the Python entry for a model held in memory (training's
validation): conversations may be given as `Conversation` objects, nothing is
printed, and it returns this run's mean score and answer CE.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..adapter import adapter_fingerprint, get_delta_mem
from ..runtime.generate import GenerationConfig, stop_ids
from ..runtime.render import Renderer
from .engine import answer_batch, answer_ce
from .items import Conversation
from .methods import MISMATCHED, SYSTEM_PROMPT, Env, Prepared, answer_ids, build, check_method, label, uses_window
from .suites import SUITES, answer_text, score_item, select, target_text

RESULTS = "results.jsonl"


@dataclass
class EvalSpec:
    """One evaluation run. `limit` is per conversation; `conversations` (ids) None = the suite's default set."""

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
        if self.suite == "synthetic" and self.data is not None:
            raise ValueError("suite synthetic is generated in-process (choose it with --seed); it takes no --data")
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


def run_eval(model, tokenizer, spec: EvalSpec, encoder=None, progress: bool = True,
             conversations: list[Conversation] | None = None) -> dict:
    """Run `spec` (results appended to `spec.out`), then rewrite the folder's reports. Returns the summary.

    `conversations`: the suite's conversations given in Python instead of read from `spec.data`
    (`spec.conversations` ids still select among them)."""
    from .report import write_reports

    run_items(model, tokenizer, spec, conversations, encoder, progress)
    return write_reports([spec.out], spec.out)


def evaluate(model, tokenizer, suite: str = "synthetic", conversations: list[Conversation] | None = None,
             method: str = "delta-mem", condition: str | None = "memory-only", window: int = 1024,
             out: str | None = None, limit: int | None = None, max_new_tokens: int = 32, batch_size: int = 8,
             seed: int = 0, encoder=None, progress: bool = False) -> dict:
    """Evaluate the model as it is in memory (any adapter attached, trained or not) on one suite and method;
    quiet, no reports. Returns this run's `{"label", "window", "n", "skipped", "score", "answer_ce",
    "categories": {category: score}, "records"}` (`score`, `answer_ce`: means over the answered items).

    `conversations`: `Conversation`s to use instead of the suite's default set (e.g.
    `heldout_conversations(16, seed)` from `deltamem.eval.synthetic`). `out`: a folder for results and
    the per-conversation caches (reuse one across calls so a mismatched run finds the memories a
    memory-only run wrote; results are keyed by the adapter's weights, so each training step has its
    own); None = a temporary folder, removed afterwards. The model is put in eval mode for the run and
    restored after.
    """
    spec = EvalSpec(suite, method, condition, window, None, limit, None, out, max_new_tokens, batch_size, seed)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="deltamem-eval-") if out is None else nullcontext(out) as folder:
            spec.out = folder
            records = run_items(model, tokenizer, spec, conversations, encoder, progress)
    finally:
        model.train(was_training)
    records = [r for r in records if r.get("metric") != "perplexity"]
    answered = [r for r in records if r.get("score") is not None]
    ces = [r["answer_ce"] for r in answered if r.get("answer_ce") is not None]
    cats: dict = {}
    for r in answered:
        cats.setdefault(str(r["category"]), []).append(r["score"])
    return {"label": label(method, condition), "window": window if uses_window(method, condition) else None,
            "n": len(answered), "skipped": len(records) - len(answered),
            "score": _mean([r["score"] for r in answered]), "answer_ce": _mean(ces),
            "categories": {c: _mean(v) for c, v in sorted(cats.items())}, "records": records}


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _load(spec: EvalSpec, conversations: list[Conversation] | None) -> tuple[list[Conversation], str | None]:
    suite = SUITES[spec.suite]
    if conversations is None:
        data = spec.data or suite.default_data(spec.out, spec.seed)
        return suite.load(data, spec.seed), data
    if not isinstance(conversations, (list, tuple)) or not all(isinstance(c, Conversation) for c in conversations):
        raise ValueError("conversations must be a list of deltamem.eval.items.Conversation")
    ids = [c.id for c in conversations]
    if len(set(ids)) != len(ids):
        raise ValueError(f"conversation ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})}")
    return list(conversations), spec.data


def run_items(model, tokenizer, spec: EvalSpec, conversations: list[Conversation] | None = None, encoder=None,
              progress: bool = True) -> list[dict]:
    """Answer every selected item not yet in `spec.out` (appending its record) and return this run's records,
    those found already done included. `conversations`: as in `run_eval`."""
    all_convs, data = _load(spec, conversations)
    if spec.suite == "general" and spec.condition in MISMATCHED:
        raise ValueError("suite general has one (unrelated) history: the mismatched control does not apply")
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

    done = {r["key"]: r for r in read_results(spec.out) if "key" in r}
    records = [done[k] for c in convs for k in [key(c, it.id, it.question) for it in c.items] if k in done]
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
            records.append(rec)

        for i, (conv, items) in enumerate(todo):
            ppl_key = key(conv, "perplexity")
            want_ppl = spec.suite == "general" and spec.method in ("none", "delta-mem") and ppl_key not in done
            if not items and not want_ppl:
                continue
            prep = Prepared(env, conv)
            partner = _partner(env, convs, all_convs, i) if spec.condition in MISMATCHED else None
            ctx = build(env, spec.method, spec.condition, prep, partner)
            if ctx.prefix is None:  # does not fit: one record per item says so
                for it in items:
                    emit({**base, "key": key(conv, it.id, it.question), "conversation": conv.id, "item": it.id,
                          "category": it.category, "question": it.question, "gold": it.answers, "prediction": None,
                          "score": None, "answer_ce": None, "skipped": ctx.note})
                bar.update(len(items))
                continue
            for b in range(0, len(items), spec.batch_size):
                batch = items[b:b + spec.batch_size]
                t0 = time.perf_counter()
                suffixes = [ctx.suffix(it) for it in batch]
                rows = answer_batch(ctx.prefix, suffixes, env.cfg, env.stop, env.pad_id)
                dt = (time.perf_counter() - t0) / len(batch)
                ces = _answer_ces(env, ctx.prefix, batch, suffixes)
                for it, toks, ce in zip(batch, rows, ces):
                    reply = tokenizer.decode(toks, skip_special_tokens=True).strip()
                    pred = answer_text(reply, it)
                    emit({**base, "key": key(conv, it.id, it.question), "conversation": conv.id, "item": it.id,
                          "category": it.category, "question": it.question, "gold": it.answers, "reply": reply,
                          "prediction": pred, "score": score_item(pred, it), "answer_ce": ce,
                          "latency_s": round(dt, 4), "prompt_tokens": ctx.prompt_tokens(it), "note": ctx.note})
                bar.update(len(batch))
            if want_ppl:
                emit({**base, "key": ppl_key, "conversation": conv.id, "item": "perplexity", "category": "perplexity",
                      **_perplexity(env, spec, prep, ctx, data)})
    bar.close()
    return records


def _answer_ces(env: Env, prefix, items, suffixes) -> list[float | None]:
    """Each item's `answer_ce` (None where it has no gold reply text or the answer would not fit)."""
    targets = [answer_ids(env, text) if (text := target_text(it)) else None for it in items]
    ok = [i for i, (s, t) in enumerate(zip(suffixes, targets))
          if t and prefix.length + len(s) + len(t) <= env.max_positions]
    out: list[float | None] = [None] * len(items)
    for i, ce in zip(ok, answer_ce(prefix, [suffixes[i] for i in ok], [targets[i] for i in ok], env.pad_id)):
        out[i] = ce
    return out


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
