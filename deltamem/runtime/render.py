"""Messages -> tokens: validation, chat-template rendering, and write-pass planning.

One code path renders and segments every write, for `MemorySession.write` and
for training episodes alike (docs/design.md section 4):

* each message is rendered alone with the tokenizer's chat template (after a
  fixed system message, which is stripped) so its tokens do not depend on how
  messages are grouped into calls;
* a write pass is `[system prompt] + [recent transcript tail] + [new tokens]`:
  the first two parts are read-only context, only the new tokens write;
* new messages are packed whole into passes of at most `segment_tokens` new
  tokens (a longer message is split across passes), so writing a long list
  equals writing its segments one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

ROLES = ("system", "user", "assistant")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def check_messages(messages, where: str = "messages") -> list[dict]:
    """Validate chat messages; return normalised copies. Errors name the offending message."""
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{where} must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}] has unknown role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}[{i}] has empty or non-text content")
        msg = {"role": role, "content": content}
        for key in ("name", "timestamp"):
            if m.get(key) is not None:
                if not isinstance(m[key], str):
                    raise ValueError(f"{where}[{i}].{key} must be a string")
                msg[key] = m[key]
        out.append(msg)
    return out


def message_text(m: dict) -> str:
    """Content with optional timestamp and speaker name: `[date] Name: text`."""
    prefix = f"[{m['timestamp']}] " if m.get("timestamp") else ""
    name = f"{m['name']}: " if m.get("name") else ""
    return prefix + name + m["content"]


class Renderer:
    """Renders messages with a tokenizer's chat template, one message at a time."""

    def __init__(self, tokenizer, system_prompt: str):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self._system = [{"role": "system", "content": system_prompt}]
        self._prefix = self._template(self._system)
        self.system_ids = self.encode(self._prefix)

    def _template(self, messages, generation_prompt: bool = False) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)  # plain fallback for template-less models
        return text + ("assistant: " if generation_prompt else "")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def message(self, m: dict) -> str:
        """The chat-template text of one message (as it appears after the system message)."""
        full = self._template(self._system + [{"role": m["role"], "content": message_text(m)}])
        if not full.startswith(self._prefix):
            raise ValueError("the tokenizer's chat template does not render messages incrementally")
        return full[len(self._prefix):]

    def reply(self, m: dict) -> tuple[list[int], list[int]]:
        """`(header ids, content ids)` of message `m` as a reply is generated: its role's turn header,
        then its bare content (no timestamp or speaker name: replies are generated without them)."""
        text = self.message({"role": m["role"], "content": m["content"]})
        i = text.rfind(m["content"])
        if i < 0:
            raise ValueError("the tokenizer's chat template does not keep a message's content verbatim")
        return self.encode(text[:i]), self.encode(m["content"])

    def message_tokens(self, m: dict, granularity: str = "token") -> tuple[list[int], list[int]]:
        """`(token ids, sentence index of each token)`; sentence indices only matter for "sentence" writes."""
        text = self.message(m)
        if granularity != "sentence":
            return self.encode(text), []
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        # a sentence starts at the whitespace before it: byte-level BPE tokens carry that space (" The")
        starts = [mm.start() for mm in _SENTENCE_END.finditer(text)]
        sent = [sum(1 for s in starts if s <= a) for a, _ in enc["offset_mapping"]]
        return enc["input_ids"], sent

    def prompt(self, history: list[dict], question: str | None) -> list[int]:
        """Token ids of `[system] + history (+ user question) + generation prompt`."""
        ids = list(self.system_ids)
        for m in history:
            ids += self.encode(self.message(m))
        if question is not None:
            ids += self.encode(self.message({"role": "user", "content": question}))
        gen = self._template(self._system, generation_prompt=True)[len(self._prefix):]
        return ids + self.encode(gen)


@dataclass
class WritePass:
    """One forward pass of a write: `[1, T]` ids with a write mask and span ids."""

    input_ids: torch.Tensor  # [1, T]
    write_mask: torch.Tensor  # [1, T] bool: True on the new tokens
    span_ids: torch.Tensor  # [1, T] long: -1 on context, span index on new tokens
    messages: int  # messages finished in this pass
    new_tokens: int


def plan_writes(renderer: Renderer, context_ids: list[int], messages: list[dict], *, segment_tokens: int,
                context_tokens: int, granularity: str = "token") -> tuple[list[WritePass], list[list[int]]]:
    """Plan the passes that write `messages` after a transcript whose rendered tokens end with `context_ids`.

    Returns the passes and each message's token ids. Each pass holds the system
    prompt, the last `context_tokens` tokens rendered before it (read-only), and
    whole new messages up to `segment_tokens` new tokens.
    """
    if segment_tokens < 1:
        raise ValueError(f"segment_tokens must be positive, got {segment_tokens}")
    rendered = [renderer.message_tokens(m, granularity) for m in messages]
    history = list(context_ids[-context_tokens:]) if context_tokens > 0 else []
    passes, cur, cur_spans, done, span = [], [], [], 0, 0

    def flush():
        nonlocal history, cur, cur_spans, done
        if not cur:
            return
        ctx = list(renderer.system_ids) + history
        ids = ctx + cur
        passes.append(WritePass(
            input_ids=torch.tensor([ids]),
            write_mask=torch.tensor([[False] * len(ctx) + [True] * len(cur)]),
            span_ids=torch.tensor([[-1] * len(ctx) + cur_spans]),
            messages=done, new_tokens=len(cur)))
        history = (history + cur)[-context_tokens:] if context_tokens > 0 else []
        cur, cur_spans, done = [], [], 0

    for ids, sents in rendered:
        if cur and len(cur) + len(ids) > segment_tokens:
            flush()
        pieces = [ids[i:i + segment_tokens] for i in range(0, len(ids), segment_tokens)]
        for p, piece in enumerate(pieces):
            if p > 0:
                flush()
            offset = p * segment_tokens
            if granularity == "sentence" and sents:
                local = sents[offset:offset + len(piece)]
                base = local[0]
                cur_spans += [span + s - base for s in local]
                span += local[-1] - base + 1
            else:
                cur_spans += [span] * len(piece)
                span += 1
            cur += piece
        done += 1
    flush()
    return passes, [ids for ids, _ in rendered]
