"""`Engine`: the one thread that owns the model. Everything that touches the model or the tokenizer
runs here, so no two forwards ever race and the tokenizer is never shared between threads.

Continuous batching: the loop keeps one running batch of replies (`batching.Running`)
and, between two decode steps, runs the calls that arrived meanwhile (loading a
session, rendering a prompt, a write) and takes in waiting generation requests,
up to `max_batch` rows: they are prefilled together and join the batch, which
decodes them alongside the others from the next step on. Each row carries its
own memory state, KV cache row, sampling settings and generator, and leaves the
batch as soon as it stops (EOS or `max_new_tokens`). An idle engine waits
`batch_wait_s` after a first request so that requests arriving together are
prefilled together. `max_batch=1` serves generation requests one at a time.
Writes run one at a time through `MemorySession.write`, the same path as a
local session, so a stored state can be reproduced bit-exactly by replaying its
transcript.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..adapter import MemoryState
from ..runtime.generate import GenerationConfig, stop_ids
from .batching import Running, mergeable

Event = tuple[str, object]  # ("text", str) | ("done", {"finish_reason", "completion_tokens"}) | ("error", exc)


@dataclass
class GenJob:
    prompt: list[int]
    state: MemoryState  # one row
    cfg: GenerationConfig
    emit: Callable[[str, object], None]  # called from the engine thread


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
        self.batches: list[int] = []  # rows of each decode step (for the benchmark)
        self._q: queue.Queue = queue.Queue()
        self._waiting: list[GenJob] = []
        self._mergeable: bool | None = None  # known after the first prefill
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

    def _drain(self, block: bool) -> bool:
        """Run the calls and queue the generation requests that are waiting (with `block`, first wait for
        one job, then `batch_wait_s` more for the requests that arrive with it). False once closed."""
        deadline = None
        while True:
            try:
                if block and deadline is None:
                    job = self._q.get()
                elif deadline is not None and (wait := deadline - time.monotonic()) > 0:
                    job = self._q.get(timeout=wait)
                else:
                    job = self._q.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            if isinstance(job, CallJob):
                self._call(job)
                continue
            self._waiting.append(job)
            if block and deadline is None:
                deadline = time.monotonic() + self.batch_wait_s

    def _loop(self) -> None:
        batch: Running | None = None
        open_ = True
        while open_ or batch is not None:
            if open_:
                open_ = self._drain(block=batch is None and not self._waiting)
            free = self.max_batch - (len(batch.rows) if batch else 0)
            if self._waiting and free > 0 and (batch is None or self._mergeable):
                jobs, self._waiting = self._waiting[:free], self._waiting[free:]
                batch = self._admit(batch, jobs)
            if batch is not None:
                batch = self._step(batch)
        for job in self._waiting:
            job.emit("error", RuntimeError("the engine is closed"))

    def _admit(self, batch: Running | None, jobs: list[GenJob]) -> Running | None:
        """Prefill `jobs` and add them to `batch` (or start one); a failed prefill fails only these jobs."""
        try:
            new = Running.start(self.model, jobs, self.tokenizer, self.pad_id)
        except Exception as e:  # noqa: BLE001 - handed to the requests
            for j in jobs:
                j.emit("error", e)
            return batch
        if self._mergeable is None:
            self._mergeable = mergeable(new.cache)
        if batch is None:
            return new
        batch.join(new)
        return batch

    def _step(self, batch: Running) -> Running | None:
        """Pick and hand out every row's next token, let stopped rows go, and run one decode forward for
        the rest. Returns the batch, or None once it is empty."""
        try:
            tokens = batch.pick()
            keep = []
            for i, (row, tok) in enumerate(zip(batch.rows, tokens)):
                if tok in self.stop:
                    self._finish(row, "stop")
                    continue
                row.count += 1
                if piece := row.decoder.push(tok):
                    row.job.emit("text", piece)
                if row.count >= row.cfg.max_new_tokens:
                    self._finish(row, "length")
                else:
                    keep.append(i)
            if not keep:
                return None
            batch.keep(keep)
            self.batches.append(len(keep))
            batch.step([tokens[i] for i in keep])
            return batch
        except Exception as e:  # noqa: BLE001 - every row still waiting hears about it
            for row in batch.rows:
                if not row.done:
                    row.job.emit("error", e)
            return None

    @staticmethod
    def _finish(row, reason: str) -> None:
        row.done = True
        if tail := row.decoder.finish():
            row.job.emit("text", tail)
        row.job.emit("done", {"finish_reason": reason, "completion_tokens": row.count})
