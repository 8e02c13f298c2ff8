"""`Engine`: the one thread that owns the model. Everything that touches the model or the tokenizer
runs here, so no two forwards ever race and the tokenizer is never shared between threads.

Micro-batching: generation requests that arrive together (within `batch_wait_s`
of each other, up to `max_batch`) and share their sampling settings are decoded
in the same forward passes; each row carries its own memory state (the batch is
`MemoryState.cat` of the rows) and its own KV cache row (`generate_tokens`
left-pads the prompts). A row stops at its own EOS or `max_new_tokens`; the
batch runs until its last row stops. Writes run one at a time through
`MemorySession.write`, the same path as a local session, so a stored state can
be reproduced bit-exactly by replaying its transcript.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..adapter import MemoryState
from ..runtime.generate import GenerationConfig, TextDecoder, generate_tokens, stop_ids

Event = tuple[str, object]  # ("text", str) | ("done", {"finish_reason", "completion_tokens"}) | ("error", exc)


@dataclass
class GenJob:
    prompt: list[int]
    state: MemoryState  # one row
    cfg: GenerationConfig
    emit: Callable[[str, object], None]  # called from the engine thread

    def key(self) -> tuple:
        """Rows decode together only when their sampling settings agree (a seeded row decodes alone)."""
        c = self.cfg
        return (c.do_sample, c.temperature, c.top_k, c.top_p, id(self) if c.seed is not None else None)


@dataclass
class CallJob:
    fn: Callable[[], object]
    future: concurrent.futures.Future


class Engine:
    """Runs model work on one thread. `max_batch=1` serves generation requests one at a time."""

    def __init__(self, model, tokenizer, max_batch: int = 16, batch_wait_s: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.stop = stop_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batches: list[int] = []  # rows per generation batch (for the benchmark)
        self._q: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deltamem-engine", daemon=True)
        self._thread.start()

    # ---- submitting --------------------------------------------------------------------------
    def call(self, fn: Callable, *args, **kwargs) -> concurrent.futures.Future:
        """Run `fn(*args, **kwargs)` on the engine thread."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._put(CallJob(lambda: fn(*args, **kwargs), fut))
        return fut

    def generate(self, prompt: list[int], state: MemoryState, cfg: GenerationConfig,
                 emit: Callable[[str, object], None]) -> None:
        """Queue a generation; `emit` receives its events on the engine thread."""
        self._put(GenJob(prompt, state, cfg, emit))

    def _put(self, job) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        self._q.put(job)

    def close(self) -> None:
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=30)

    # ---- the loop ----------------------------------------------------------------------------
    @staticmethod
    def _call(job: CallJob) -> None:
        if job.future.set_running_or_notify_cancel():
            try:
                job.future.set_result(job.fn())
            except BaseException as e:  # handed to the caller
                job.future.set_exception(e)

    def _collect(self, first: GenJob) -> list[GenJob]:
        """`first` plus the generation requests that arrive within `batch_wait_s`. Calls that arrive
        meanwhile (loading a session, rendering a prompt, a write) run at once, so the requests behind
        them can still make this batch."""
        jobs = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch:
            wait = deadline - time.monotonic()
            try:
                job = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._q.put(None)
                break
            if isinstance(job, CallJob):
                self._call(job)
            else:
                jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            if isinstance(first, CallJob):
                self._call(first)
                continue
            groups: dict[tuple, list[GenJob]] = {}
            for job in self._collect(first):
                groups.setdefault(job.key(), []).append(job)
            for group in groups.values():
                self._generate(group)

    def _generate(self, rows: list[GenJob]) -> None:
        self.batches.append(len(rows))
        finished = [False] * len(rows)
        try:
            cfg = dataclasses.replace(rows[0].cfg, max_new_tokens=max(j.cfg.max_new_tokens for j in rows))
            state = MemoryState.cat([j.state for j in rows])
            decoders = [TextDecoder(self.tokenizer) for _ in rows]
            counts = [0] * len(rows)

            def finish(i: int, reason: str) -> None:
                finished[i] = True
                if tail := decoders[i].finish():
                    rows[i].emit("text", tail)
                rows[i].emit("done", {"finish_reason": reason, "completion_tokens": counts[i]})

            for step in generate_tokens(self.model, [j.prompt for j in rows], state, cfg, self.stop, self.pad_id):
                for i, tok in enumerate(step):
                    if finished[i]:
                        continue
                    if tok is None:
                        finish(i, "stop")
                        continue
                    counts[i] += 1
                    if piece := decoders[i].push(tok):
                        rows[i].emit("text", piece)
                    if counts[i] >= rows[i].cfg.max_new_tokens:
                        finish(i, "length")
                if all(finished):
                    break
            for i in range(len(rows)):
                if not finished[i]:
                    finish(i, "length")
        except Exception as e:  # every row still waiting hears about it
            for i, j in enumerate(rows):
                if not finished[i]:
                    j.emit("error", e)
