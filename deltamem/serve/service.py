"""`MemoryService`: what the HTTP routes do, without HTTP.

Every operation on one memory holds that memory's lock (an `asyncio.Lock` per
`(tenant, id)`), so turns on one memory apply in arrival order and a read sees
a committed version. A turn runs as its own task: it loads the memory, answers
through the engine, writes the user turn and the reply with `MemorySession.write`
and commits state + transcript + version in one transaction. The task does not
depend on the client: a client that disconnects mid-stream still gets its
completed turn stored, and a crash before the commit stores nothing.

Several servers may share one database. When a commit finds that another
server committed first (a newer version, or the memory created meanwhile), the
write is rebased: the memory is read again and the same messages are written
onto the newer state, then committed as the version after it. The reply,
already generated, stands; the client never sees the conflict. Each write is
stored exactly once, in commit order, so a memory's version counts its writes.
A connection lost during the commit answers 503 unless a re-read shows that
the commit did land.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from anyio import to_thread

from ..adapter import MemoryState, adapter_fingerprint
from ..adapter.model import get_delta_mem
from ..runtime.generate import GenerationConfig
from ..runtime.session import (DEFAULT_SYSTEM_PROMPT, IncompatibleMemory, MemorySession, WriteTooLarge,
                               turn_messages)
from ..store import AlreadyExists, MemoryRecord, MemoryStore, StoreUnavailable, VersionConflict
from .engine import Engine
from .errors import ApiError

log = logging.getLogger("deltamem.serve")
MEMORY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}$")
MAX_REBASES = 64  # a write that loses this many commit races in a row is refused (503), not retried forever


def check_memory_id(mid, param: str = "memory_id") -> str:
    if not isinstance(mid, str) or not MEMORY_ID.match(mid):
        raise ApiError(422, f"{param} must be 1-128 characters of letters, digits and ._:@+- starting with a letter "
                            f"or digit, got {mid!r}"[:300], param=param)
    return mid


@dataclass
class Turn:
    """An answer in progress: `prompt_ids`, then events `("text", str)`, ending with `("done", dict)`
    or `("error", ApiError)`."""

    prompt_ids: list[int]
    events: asyncio.Queue


class MemoryService:
    """Memories of every tenant, served by one model through `engine`, persisted in `store`."""

    def __init__(self, model, tokenizer, store: MemoryStore, engine: Engine, model_name: str, *,
                 window_tokens: int = 1024, max_prompt_tokens: int = 4096, max_write_tokens: int = 16384,
                 max_new_tokens: int = 512, system_prompt: str = DEFAULT_SYSTEM_PROMPT, cache_size: int = 256):
        self.model, self.tokenizer, self.store, self.engine = model, tokenizer, store, engine
        self.model_name = model_name
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self.settings = dict(window_tokens=window_tokens, system_prompt=system_prompt, segment_tokens=1024,
                             context_tokens=128, max_write_tokens=max_write_tokens)
        self.adapter = adapter_fingerprint(model)
        self.backbone = get_delta_mem(model).fingerprint or ""
        self.empty_state = MemoryState.zeros(model).to_bytes()
        self._locks: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._cache: OrderedDict = OrderedDict()  # (tenant, id) -> ((version, updated_at), MemorySession)
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size
        self._tasks: set[asyncio.Task] = set()
        self.rebases = 0  # writes re-applied onto a newer version committed by another server

    # ---- plumbing ----------------------------------------------------------------------------
    def _lock(self, tenant: str, mid: str) -> asyncio.Lock:
        lock = self._locks.get((tenant, mid))
        if lock is None:
            lock = self._locks[(tenant, mid)] = asyncio.Lock()
        return lock

    async def _model(self, fn, *args, **kwargs):
        """Run on the engine thread (the only thread that touches the model and tokenizer)."""
        return await asyncio.wrap_future(self.engine.call(fn, *args, **kwargs))

    async def _db(self, fn, *args):
        try:
            return await to_thread.run_sync(fn, *args)
        except StoreUnavailable:
            raise ApiError(503, "the database is unavailable; nothing was changed, retry",
                           code="database_unavailable") from None

    def _drop(self, tenant: str, mid: str) -> None:
        with self._cache_lock:
            self._cache.pop((tenant, mid), None)

    def _session(self, rec: MemoryRecord) -> MemorySession:
        """The memory as a session (cached per version); engine thread."""
        key = (rec.tenant, rec.memory_id)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == (rec.version, rec.updated_at):
                self._cache.move_to_end(key)
                return hit[1]
        if (rec.adapter, rec.backbone) != (self.adapter, self.backbone):
            raise ApiError(409, f"memory {rec.memory_id!r} was written by adapter {rec.adapter} on backbone "
                                f"{rec.backbone}; this server runs adapter {self.adapter} on backbone {self.backbone}",
                           code="incompatible_memory")
        state = MemoryState.from_bytes(rec.state, source=f"memory {rec.memory_id!r}")
        sess = MemorySession.restore(self.model, self.tokenizer, state, rec.transcript, rec.tokens_written,
                                     **self.settings)
        self._remember(rec, sess)
        return sess

    def _remember(self, rec: MemoryRecord, sess: MemorySession) -> None:
        """Cache a session for the record's (version, updated_at): a row deleted and recreated by another
        server at the same version is not mistaken for this one."""
        key = (rec.tenant, rec.memory_id)
        with self._cache_lock:
            self._cache[key] = ((rec.version, rec.updated_at), sess)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    async def _get(self, tenant: str, mid: str, create: bool = False) -> tuple[MemoryRecord, bool]:
        """`(record, stored)`; with `create`, an unknown id gives an empty, not yet stored memory."""
        rec = await self._db(self.store.get, tenant, mid)
        if rec is not None:
            return rec, True
        if not create:
            raise ApiError(404, f"no memory {mid!r}", param="memory_id", code="memory_not_found")
        return MemoryRecord(tenant, mid, self.empty_state, [], 0, self.adapter, self.backbone, 0, 0.0, 0.0), False

    def _write_session(self, sess: MemorySession, messages: list[dict]) -> bytes:
        try:
            sess.write(messages)
        except WriteTooLarge as e:
            raise ApiError(413, str(e), param="messages", code="context_length_exceeded") from None
        except ValueError as e:
            raise ApiError(422, str(e), param="messages") from None
        return sess.state.to_bytes()

    async def _commit(self, rec: MemoryRecord, stored: bool, sess: MemorySession, state: bytes) -> MemoryRecord:
        """Store the session's state and transcript as the version after `rec`, in one transaction.
        Raises `VersionConflict` / `AlreadyExists` (nothing stored) when another server committed first,
        and `ApiError` 503 when the connection failed and the commit did not land."""
        store = self.store
        args = (rec.tenant, rec.memory_id, rec.version, state, sess.transcript, sess.tokens_written, self.adapter,
                self.backbone)
        try:
            if stored:
                new = await to_thread.run_sync(store.commit, *args)
            else:
                new = await to_thread.run_sync(store.create, *args[:2], *args[3:], rec.version + 1)
        except StoreUnavailable:
            self._drop(rec.tenant, rec.memory_id)
            new = await self._landed(rec, sess, state)
            if new is None:
                raise ApiError(503, f"the database connection failed while storing the write to memory "
                                    f"{rec.memory_id!r}; it was not stored: retry",
                               code="database_unavailable") from None
            log.info("commit to memory %r reported a lost connection but landed (version %d)", rec.memory_id,
                     new.version)
        except BaseException:
            self._drop(rec.tenant, rec.memory_id)
            raise
        self._remember(new, sess)
        return new

    async def _landed(self, rec: MemoryRecord, sess: MemorySession, state: bytes) -> MemoryRecord | None:
        """After a connection failure during a commit: the stored row if that commit did land (the failure
        hit the acknowledgement), else None. Unreadable counts as not landed."""
        try:
            now = await to_thread.run_sync(self.store.get, rec.tenant, rec.memory_id)
        except StoreUnavailable:
            return None
        if (now is not None and now.version == rec.version + 1 and now.state == state
                and now.transcript == sess.transcript):
            return now
        return None

    async def _rebase(self, rec: MemoryRecord, create: bool) -> tuple[MemoryRecord, bool]:
        """The memory as another server left it after winning a commit race (see the module docstring)."""
        self._drop(rec.tenant, rec.memory_id)
        self.rebases += 1
        new, stored = await self._get(rec.tenant, rec.memory_id, create=create)
        log.info("memory %r moved from version %d to %d under another server: writing onto the newer state",
                 rec.memory_id, rec.version, new.version if stored else 0)
        return new, stored

    async def _write(self, rec: MemoryRecord, stored: bool, messages: list[dict], create: bool = False,
                     rebase: bool = True) -> MemoryRecord:
        """Write `messages` onto the memory and commit them as its next version, rebasing onto a newer
        version when another server committed first (`create`: a memory deleted meanwhile starts anew,
        else 404; `rebase=False`: the conflict is raised instead)."""
        for _ in range(MAX_REBASES):
            sess = await self._model(self._session, rec)
            try:
                state = await self._model(self._write_session, sess, messages)
            except BaseException:
                self._drop(rec.tenant, rec.memory_id)  # a failed write changes nothing, but be sure
                raise
            try:
                return await self._commit(rec, stored, sess, state)
            except (VersionConflict, AlreadyExists):
                if not rebase:
                    raise
                rec, stored = await self._rebase(rec, create)
        raise ApiError(503, f"memory {rec.memory_id!r} kept changing under other servers' writes; retry",
                       code="write_contention")

    # ---- operations --------------------------------------------------------------------------
    def info(self, rec: MemoryRecord) -> dict:
        try:
            nbytes = MemoryState.from_bytes(rec.state).nbytes
        except ValueError:
            nbytes = None
        return {"id": rec.memory_id, "object": "memory", "version": rec.version, "turns": len(rec.transcript),
                "tokens_written": rec.tokens_written, "state_bytes": nbytes, "stored_bytes": len(rec.state),
                "created_at": int(rec.created_at), "updated_at": int(rec.updated_at), "adapter": rec.adapter,
                "backbone": rec.backbone, "messages": rec.transcript}

    async def get(self, tenant: str, mid: str) -> dict:
        async with self._lock(tenant, mid):
            rec, _ = await self._get(tenant, mid)
            return self.info(rec)

    async def create(self, tenant: str, mid: str, messages: list[dict]) -> dict:
        async with self._lock(tenant, mid):
            rec, stored = await self._get(tenant, mid, create=True)
            if stored:
                raise ApiError(409, f"memory {mid!r} already exists", param="id", code="memory_exists")
            try:
                if messages:
                    return self.info(await self._write(rec, False, messages, rebase=False))
                new = await self._db(self.store.create, tenant, mid, self.empty_state, [], 0, self.adapter,
                                     self.backbone)
            except AlreadyExists:
                raise ApiError(409, f"memory {mid!r} already exists", param="id", code="memory_exists") from None
            return self.info(new)

    async def write(self, tenant: str, mid: str, messages: list[dict]) -> dict:
        async with self._lock(tenant, mid):
            rec, _ = await self._get(tenant, mid)
            return self.info(await self._write(rec, True, messages))

    async def delete(self, tenant: str, mid: str) -> dict:
        async with self._lock(tenant, mid):
            if not await self._db(self.store.delete, tenant, mid):
                raise ApiError(404, f"no memory {mid!r}", param="memory_id", code="memory_not_found")
            self._drop(tenant, mid)
            return {"id": mid, "object": "memory.deleted", "deleted": True}

    async def export(self, tenant: str, mid: str) -> bytes:
        async with self._lock(tenant, mid):
            rec, _ = await self._get(tenant, mid)
            sess = await self._model(self._session, rec)
            return await self._model(sess.to_bytes, self.adapter)

    def _parse(self, data: bytes) -> MemorySession:
        try:
            return MemorySession.from_bytes(data, self.model, self.tokenizer, source="imported file",
                                            adapter=self.adapter, **self.settings)
        except IncompatibleMemory as e:
            raise ApiError(409, str(e), code="incompatible_memory") from None
        except ValueError as e:
            raise ApiError(422, str(e), code="invalid_memory_file") from None

    async def import_(self, tenant: str, mid: str, data: bytes) -> dict:
        """Replace (or create) a memory from an exported session file; a bad file changes nothing."""
        sess = await self._model(self._parse, data)
        state = await self._model(sess.state.to_bytes)
        async with self._lock(tenant, mid):
            rec, stored = await self._get(tenant, mid, create=True)
            for _ in range(MAX_REBASES):  # a replacement lands on whatever version another server left
                try:
                    return self.info(await self._commit(rec, stored, sess, state))
                except (VersionConflict, AlreadyExists):
                    rec, stored = await self._rebase(rec, create=True)
            raise ApiError(503, f"memory {mid!r} kept changing under other servers' writes; retry",
                           code="write_contention")

    # ---- answering ---------------------------------------------------------------------------
    def generation(self, max_tokens: int | None, temperature: float | None, top_p: float | None,
                   seed: int | None) -> GenerationConfig:
        n = self.max_new_tokens if max_tokens is None else max_tokens
        if n > self.max_new_tokens:
            raise ApiError(422, f"max_tokens={n} exceeds this server's limit of {self.max_new_tokens}",
                           param="max_tokens")
        sample = bool(temperature)  # None or 0: greedy
        try:
            return GenerationConfig(max_new_tokens=n, do_sample=sample, temperature=temperature if sample else 1.0,
                                    top_p=top_p if top_p is not None else 1.0, seed=seed)
        except ValueError as e:
            raise ApiError(422, str(e)) from None

    async def open_turn(self, tenant: str, mid: str, text: str, cfg: GenerationConfig, chat: bool) -> Turn:
        """Start answering `text` with memory `mid` (`chat`: then write the turn; else read-only). Raises
        `ApiError` for what is known before generation (unknown memory, prompt too long)."""
        events: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(self._turn(tenant, mid, text, cfg, chat, events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        kind, value = await events.get()
        if kind == "error":
            raise value
        return Turn(value, events)

    async def _turn(self, tenant, mid, text, cfg, chat, events: asyncio.Queue) -> None:
        try:
            async with self._lock(tenant, mid):
                rec, stored = await self._get(tenant, mid, create=chat)
                sess = await self._model(self._session, rec)
                prompt = await self._model(sess.prompt_ids, text)
                if len(prompt) > self.max_prompt_tokens:
                    raise ApiError(413, f"the prompt has {len(prompt)} tokens, over this server's limit of "
                                        f"{self.max_prompt_tokens}", param="messages", code="context_length_exceeded")
                events.put_nowait(("ready", prompt))
                loop = asyncio.get_running_loop()
                out: asyncio.Queue = asyncio.Queue()
                self.engine.generate(prompt, sess.state, cfg,
                                     lambda k, v: loop.call_soon_threadsafe(out.put_nowait, (k, v)))
                pieces = []
                while True:
                    kind, value = await out.get()
                    if kind == "error":
                        raise value
                    if kind == "done":
                        break
                    pieces.append(value)
                    events.put_nowait(("text", value))
                done = dict(value, reply="".join(pieces).strip())
                if chat:
                    messages = turn_messages(text, done["reply"])
                    done["reply"] = messages[1]["content"]
                    new = await self._write(rec, stored, messages, create=True)
                    done["version"] = new.version
                events.put_nowait(("done", done))
        except ApiError as e:
            events.put_nowait(("error", e))
        except Exception:
            log.exception("turn on memory %r failed", mid)
            events.put_nowait(("error", ApiError(500, "internal error while answering", type="server_error")))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
