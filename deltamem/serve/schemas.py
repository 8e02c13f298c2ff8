"""Request bodies (pydantic), in the OpenAI chat schema plus the memory endpoints' own.

Fields OpenAI clients may send that do not apply here are accepted and ignored
(`extra="ignore"`), except where ignoring would silently change the answer
(`n > 1`, `stop`), which is refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..runtime.render import check_messages
from .errors import ApiError


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(description="system, user or assistant")
    content: str | list[TextPart] | None = None
    name: str | None = None
    timestamp: str | None = Field(None, description="optional date shown with the message in memory")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    user: str | None = Field(None, description="selects the memory (created on first use)")
    memory_id: str | None = Field(None, description="selects the memory; overrides `user`")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None


class CreateMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description="the new memory's id (default: a random one)")
    messages: list[Message] = Field(default_factory=list, description="written into the new memory at once")


class WriteMessages(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


def plain_messages(messages: list[Message], param: str = "messages") -> list[dict]:
    """Flatten content parts to text and validate roles and contents (422 naming the message)."""
    out = []
    for m in messages:
        content = m.content if not isinstance(m.content, list) else "".join(p.text for p in m.content)
        out.append({k: v for k, v in (("role", m.role), ("content", content), ("name", m.name),
                                      ("timestamp", m.timestamp)) if v is not None})
    try:
        return check_messages(out, where=param)
    except ValueError as e:
        raise ApiError(422, str(e), param=param) from None


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    raise ApiError(422, "messages must contain a user message to answer", param="messages")
