"""`MemorySession`: one user's memory, following the session rules of docs/design.md section 4.

1. every message is written once, in order, when it arrives (`write`, `chat`);
2. write passes see the recent transcript as read-only context; long writes
   go in segments and the state carries across them;
3. answers see the last `window_tokens` of the transcript (0 = memory only);
   everything older reaches the model only through the memory;
4. `ask` is read-only: the memory is unchanged;
5. the state is the whole memory, saved bit-exactly in a few KB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from ..adapter import MemoryState, adapter_fingerprint
from ..adapter.model import get_delta_mem
from .generate import GenerationConfig, generate_tokens, stop_ids, stream_text
from .render import Renderer, check_messages, plan_writes
from .writer import run_write

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant with a long-term memory of earlier conversations."
CONTEXT_TOKENS = 128  # recent transcript tokens shown read-only in each write pass
STATE_FILE = "memory.safetensors"
SESSION_FORMAT = 1


class WriteTooLarge(ValueError):
    """A write above `max_write_tokens` (the server answers it with 413 instead of 422)."""


class IncompatibleMemory(ValueError):
    """A stored memory written by another backbone or adapter (the server answers it with 409)."""


def turn_messages(user_text: str, reply: str) -> list[dict]:
    """The two messages a chat turn writes; an empty reply is written as a placeholder."""
    return [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply.strip() or "…"}]


class MemorySession:
    """A conversation whose long-term memory is a δ-mem state.

    Args:
        model: a causal LM with δ-mem attached (`attach_delta_mem` / `load_adapter`).
        tokenizer: its tokenizer (a chat template is used when present).
        state: an existing `MemoryState` (one row); None = empty memory.
        window_tokens: transcript tokens kept in the prompt when answering (0 = memory only).
        system_prompt: system message of every prompt and write pass.
        segment_tokens: most new tokens written per forward pass.
        context_tokens: recent transcript tokens shown read-only in each write pass.
        max_write_tokens: largest single `write` accepted (bigger raises before anything changes).
        progress: show a progress bar for long writes.
    """

    def __init__(self, model, tokenizer, state: MemoryState | None = None, window_tokens: int = 1024,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, segment_tokens: int = 1024,
                 context_tokens: int = CONTEXT_TOKENS,
                 max_write_tokens: int = 262_144, progress: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.dm = get_delta_mem(model)
        for name, val, lo in (("window_tokens", window_tokens, 0), ("segment_tokens", segment_tokens, 1),
                              ("context_tokens", context_tokens, 0), ("max_write_tokens", max_write_tokens, 1)):
            if not isinstance(val, int) or val < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
        self.window_tokens, self.segment_tokens = window_tokens, segment_tokens
        self.context_tokens, self.max_write_tokens = context_tokens, max_write_tokens
        self.progress = progress
        self.renderer = Renderer(tokenizer, system_prompt)
        self.state = state if state is not None else MemoryState.zeros(model, batch_size=1)
        if self.state.batch_size != 1:
            raise ValueError(f"a session holds one memory row, got a state with {self.state.batch_size}")
        self.state.check_compatible(self.dm)
        self.transcript: list[dict] = []
        self._tokens: list[list[int]] = []  # rendered tokens of each transcript message
        self.tokens_written = 0
        self.stop = stop_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def system_prompt(self) -> str:
        return self.renderer.system_prompt

    # ---- writing ------------------------------------------------------------------------------
    def _context_ids(self, n: int) -> list[int]:
        out: list[int] = []
        for ids in reversed(self._tokens):
            if len(out) >= n:
                break
            out = ids + out
        return out[-n:] if n else []

    @torch.no_grad()
    def write(self, messages) -> int:
        """Write chat messages (role/content, optional name/timestamp) into memory, once each, in order.

        Returns the number of tokens written. Raises before any change on empty
        messages, unknown roles, or a write above `max_write_tokens`.
        """
        messages = check_messages(messages)
        if not messages:
            return 0
        passes, rendered = plan_writes(self.renderer, self._context_ids(self.context_tokens), messages,
                                       segment_tokens=self.segment_tokens, context_tokens=self.context_tokens,
                                       granularity=self.dm.config.write_granularity)
        total = sum(p.new_tokens for p in passes)
        if total > self.max_write_tokens:
            raise WriteTooLarge(f"write of {total} tokens exceeds max_write_tokens={self.max_write_tokens}")
        state = self.state.clone()  # commit only when every pass succeeded
        bar = tqdm(total=total, unit="tok", desc="writing memory", disable=not self.progress or len(passes) < 2)
        for p in passes:
            run_write(self.model, state, [p], self.pad_id)
            bar.update(p.new_tokens)
        bar.close()
        self.state = state
        self.transcript += messages
        self._tokens += rendered
        self.tokens_written += total
        return total

    # ---- answering ----------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        """`[system] + transcript window + question`, the window holding whole recent messages."""
        window: list[dict] = []
        used = 0
        for m, ids in zip(reversed(self.transcript), reversed(self._tokens)):
            if used + len(ids) > self.window_tokens:
                break
            window.insert(0, m)
            used += len(ids)
        return self.renderer.prompt(window, question)

    def _check_question(self, text) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the question must be a non-empty string")
        return text

    def stream_ask(self, question: str, **generation) -> Iterator[str]:
        """Answer read-only, yielding text pieces as they are generated."""
        cfg = GenerationConfig(**generation)
        ids = self.prompt_ids(self._check_question(question))
        tokens = generate_tokens(self.model, [ids], self.state, cfg, self.stop, self.pad_id)
        yield from stream_text(self.tokenizer, tokens)

    def ask(self, question: str, **generation) -> str:
        """Answer with the memory and the recent window; the memory is unchanged."""
        return "".join(self.stream_ask(question, **generation)).strip()

    def stream_chat(self, user_text: str, **generation) -> Iterator[str]:
        """Like `chat`, yielding text pieces; the turn is written when the stream ends."""
        pieces = []
        for piece in self.stream_ask(user_text, **generation):
            pieces.append(piece)
            yield piece
        messages = turn_messages(user_text, "".join(pieces))
        if not "".join(pieces).strip():  # the placeholder: show the caller what was written
            yield messages[1]["content"]
        self.write(messages)

    def chat(self, user_text: str, **generation) -> str:
        """Answer, then write the user turn and the reply into memory. Returns the reply."""
        return "".join(self.stream_chat(user_text, **generation)).strip()

    # ---- bookkeeping --------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"turns": len(self.transcript), "tokens_written": self.tokens_written,
                "state_bytes": self.state.nbytes, "state_file_bytes": len(self.state.to_bytes())}

    def reset(self) -> None:
        self.state = MemoryState.zeros(self.model, batch_size=1)
        self.transcript, self._tokens, self.tokens_written = [], [], 0

    def to_bytes(self, adapter: str | None = None) -> bytes:
        """State, transcript and settings as one session file's bytes (`adapter`: a precomputed
        `adapter_fingerprint`, which hashes every δ-mem weight)."""
        state = self.state.clone()
        state.extra = {
            "session_format": SESSION_FORMAT,
            "adapter": adapter or adapter_fingerprint(self.model),
            "settings": {"window_tokens": self.window_tokens, "system_prompt": self.system_prompt,
                         "segment_tokens": self.segment_tokens, "context_tokens": self.context_tokens,
                         "max_write_tokens": self.max_write_tokens},
            "transcript": self.transcript,
            "tokens_written": self.tokens_written,
        }
        return state.to_bytes()

    def save(self, directory: str | os.PathLike) -> None:
        """Save state, transcript and settings in one file, atomically (temp file, then rename)."""
        state = MemoryState.from_bytes(self.to_bytes())
        state.save(os.path.join(os.fspath(directory), STATE_FILE))

    @classmethod
    def restore(cls, model, tokenizer, state: MemoryState, transcript: list[dict], tokens_written: int,
                **settings) -> "MemorySession":
        """A session continuing from a stored state and the transcript that produced it."""
        sess = cls(model, tokenizer, state=state, **settings)
        sess.transcript = check_messages(transcript, where="transcript")
        sess._tokens = [sess.renderer.encode(sess.renderer.message(m)) for m in sess.transcript]
        sess.tokens_written = int(tokens_written)
        return sess

    @classmethod
    def from_bytes(cls, data: bytes, model, tokenizer, source: str = "session file", adapter: str | None = None,
                   **overrides) -> "MemorySession":
        """Parse `to_bytes` output; fails (ValueError naming `source`) on another backbone or adapter."""
        state = MemoryState.from_bytes(data, source=source)
        extra = state.extra
        if extra.get("session_format") != SESSION_FORMAT:
            raise ValueError(f"{source}: not a deltamem session file (session_format={extra.get('session_format')!r})")
        dm = get_delta_mem(model)
        try:
            state.check_compatible(dm)
        except ValueError as e:
            raise IncompatibleMemory(f"{source}: {e}") from None
        have = adapter or adapter_fingerprint(model)
        if extra.get("adapter") != have:
            raise IncompatibleMemory(f"{source}: session was written with adapter {extra.get('adapter')}, the model's "
                             f"adapter is {have}")
        settings = {**extra.get("settings", {}), **overrides}
        state.extra = {}
        try:
            return cls.restore(model, tokenizer, state, extra.get("transcript", []),
                               extra.get("tokens_written", 0), **settings)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, directory: str | os.PathLike, model, tokenizer, **overrides) -> "MemorySession":
        """Restore a saved session; fails if it was written by another backbone or adapter."""
        path = os.path.join(os.fspath(directory), STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no memory state file at {path}")
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), model, tokenizer, source=path, **overrides)
