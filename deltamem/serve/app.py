"""The FastAPI app: OpenAI-style chat completions whose memory is a δ-mem state, plus memory endpoints.

`create_app` builds everything from a model, a tokenizer and a store, so tests
can drive it in-process (no socket) or under uvicorn. Every error, including
FastAPI's own validation errors, unknown routes and the guard's 401/413, has
the OpenAI shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..store import MemoryStore
from .auth import KeyRing
from .engine import Engine
from .errors import TYPES, ApiError, error_body
from .schemas import AskRequest, ChatRequest, CreateMemory, WriteMessages, last_user_text, plain_messages
from .service import MemoryService, Turn, check_memory_id

log = logging.getLogger("deltamem.serve")
MEMORY_PATH = Path(description="the memory's id", max_length=128)
STATE_FILE_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class Guard:
    """ASGI middleware run before any route: caps the body at `max_body_bytes` (413) and maps the bearer
    key of every `/v1/` request to its tenant (401 without a valid key)."""

    def __init__(self, app, keys: KeyRing, max_body_bytes: int):
        self.app, self.keys, self.max_body_bytes = app, keys, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"].startswith("/v1/"):
            tenant = self.keys.tenant(headers.get("authorization"))
            if tenant is None:
                return await _send_error(send, ApiError(401, "missing or invalid API key (send 'Authorization: "
                                                             "Bearer <key>')", code="invalid_api_key"))
            scope.setdefault("state", {})["tenant"] = tenant
        too_big = ApiError(413, f"request body over this server's limit of {self.max_body_bytes} bytes",
                           code="request_too_large")
        try:
            if int(headers.get("content-length", "0")) > self.max_body_bytes:
                return await _send_error(send, too_big)
        except ValueError:
            return await _send_error(send, ApiError(400, "malformed Content-Length header"))
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _send_error(send, too_big)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send, e: ApiError) -> None:
    data = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if e.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _validation_error(e: RequestValidationError) -> ApiError:
    errs = e.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"malformed JSON body: {first.get('msg')}", code="invalid_json")
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "path", "query")]
    param = ".".join(loc) or None
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return ApiError(422, f"{param or 'body'}: {first.get('msg')}{more}", param=param, code="invalid_value")


def create_app(model, tokenizer, store: MemoryStore, *, keys: KeyRing | None = None, model_name: str = "deltamem",
               max_body_bytes: int = 8 << 20, max_batch: int = 16, batch_wait_s: float = 0.005, **service_kw
               ) -> FastAPI:
    """The server app. `service_kw` go to `MemoryService` (window_tokens, max_prompt_tokens, max_write_tokens,
    max_new_tokens, system_prompt). The engine thread starts now and stops with the app's lifespan."""
    engine = Engine(model, tokenizer, max_batch=max_batch, batch_wait_s=batch_wait_s)
    service = MemoryService(model, tokenizer, store, engine, model_name, **service_kw)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        await service.close()
        engine.close()

    app = FastAPI(title="deltamem", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible chat whose per-user long-term memory is a δ-mem state.")
    app.state.service, app.state.engine = service, engine
    app.add_middleware(Guard, keys=keys or KeyRing(), max_body_bytes=max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": "1"} if e.status == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        err = _validation_error(e)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), TYPES.get(e.status_code, "invalid_request_error")),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    def tenant(request: Request) -> str:
        return request.scope["state"]["tenant"]

    # ---- OpenAI endpoints --------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "deltamem"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        """Answer the last user message with the memory chosen by `memory_id` or `user` (created on first
        use), then write the user turn and the reply into it. Earlier request messages are not re-written:
        the memory already holds the conversation (use `/v1/memories/{id}/messages` to add context)."""
        if req.model != model_name:
            raise ApiError(404, f"model {req.model!r} is not served here; use {model_name!r}", param="model",
                           code="model_not_found")
        if req.stop:
            raise ApiError(422, "stop sequences are not supported", param="stop")
        if req.memory_id is None and req.user is None:
            raise ApiError(422, "set `user` (or `memory_id`) to choose the memory", param="user")
        mid = check_memory_id(req.memory_id if req.memory_id is not None else req.user,
                              "memory_id" if req.memory_id is not None else "user")
        text = last_user_text(plain_messages(req.messages))
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        cfg = service.generation(max_tokens, req.temperature, req.top_p, req.seed)
        turn = await service.open_turn(tenant(request), mid, text, cfg, chat=True)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(turn, cid, created, model_name, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        done = await _finish(turn)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done["reply"]},
                             "logprobs": None, "finish_reason": done["finish_reason"]}],
                "usage": _usage(turn, done), "memory": {"id": mid, "version": done["version"]}}

    # ---- memory endpoints --------------------------------------------------------------------
    @app.post("/v1/memories", status_code=201)
    async def create_memory(body: CreateMemory, request: Request):
        """Create a memory (empty, or with `messages` written into it)."""
        mid = check_memory_id(body.id, "id") if body.id is not None else f"mem_{uuid.uuid4().hex}"
        messages = plain_messages(body.messages) if body.messages else []
        return await service.create(tenant(request), mid, messages)

    @app.get("/v1/memories/{memory_id}")
    async def get_memory(request: Request, memory_id: str = MEMORY_PATH):
        """Version, turns, tokens written, state size, timestamps and the stored transcript."""
        return await service.get(tenant(request), check_memory_id(memory_id))

    @app.post("/v1/memories/{memory_id}/messages")
    async def write_messages(body: WriteMessages, request: Request, memory_id: str = MEMORY_PATH):
        """Write messages into the memory without generating (one write, one new version)."""
        mid = check_memory_id(memory_id)
        return await service.write(tenant(request), mid, plain_messages(body.messages))

    @app.post("/v1/memories/{memory_id}/ask")
    async def ask(body: AskRequest, request: Request, memory_id: str = MEMORY_PATH):
        """Answer a question read-only (the memory is unchanged); `prompt` is the text the model saw."""
        mid = check_memory_id(memory_id)
        if not body.question.strip():
            raise ApiError(422, "question must be a non-empty string", param="question")
        cfg = service.generation(body.max_tokens, body.temperature, body.top_p, body.seed)
        turn = await service.open_turn(tenant(request), mid, body.question, cfg, chat=False)
        done = await _finish(turn)
        prompt = await service._model(tokenizer.decode, turn.prompt_ids)
        return {"id": mid, "object": "memory.answer", "answer": done["reply"], "prompt": prompt,
                "finish_reason": done["finish_reason"], "usage": _usage(turn, done)}

    @app.get("/v1/memories/{memory_id}/export", response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    async def export_memory(request: Request, memory_id: str = MEMORY_PATH):
        """The memory as a session file (safetensors: state, transcript, settings)."""
        data = await service.export(tenant(request), check_memory_id(memory_id))
        return Response(data, media_type="application/octet-stream")

    @app.put("/v1/memories/{memory_id}/import", openapi_extra=STATE_FILE_BODY)
    async def import_memory(request: Request, memory_id: str = MEMORY_PATH):
        """Replace (or create) the memory from an exported file; 409 if another backbone or adapter wrote it."""
        mid = check_memory_id(memory_id)
        data = await request.body()
        if not data:
            raise ApiError(422, "the body must be an exported memory file", code="invalid_memory_file")
        return await service.import_(tenant(request), mid, data)

    @app.delete("/v1/memories/{memory_id}")
    async def delete_memory(request: Request, memory_id: str = MEMORY_PATH):
        return await service.delete(tenant(request), check_memory_id(memory_id))

    return app


async def _finish(turn: Turn) -> dict:
    while True:
        kind, value = await turn.events.get()
        if kind == "error":
            raise value
        if kind == "done":
            return value


def _usage(turn: Turn, done: dict) -> dict:
    p, c = len(turn.prompt_ids), done["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _sse(turn: Turn, cid: str, created: int, model: str, include_usage: bool):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    def event(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    def chunk(delta: dict, finish: str | None = None) -> str:
        return event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                      "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    texted = False
    while True:
        kind, value = await turn.events.get()
        if kind == "text":
            texted = texted or bool(value.strip())
            yield chunk({"content": value})
        elif kind == "error":
            yield event(value.body())
            break
        else:
            if not texted:  # the placeholder that was written for an empty reply
                yield chunk({"content": value["reply"]})
            yield chunk({}, value["finish_reason"])
            if include_usage:
                yield event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [], "usage": _usage(turn, value)})
            break
    yield "data: [DONE]\n\n"
