"""A training recipe in sections, validated key by key (docs/training.md).

    backbone: null                 # a local HF folder; null = the embedded SmolLM2-135M-Instruct
    init: null                     # null = a fresh adapter; else a saved adapter (a chain resolves stage names)
    adapter:    {...}              # DeltaMemConfig fields
    data:       {...}              # DataConfig: which conversations, how episodes are cut
    objectives: {...}              # ObjectivesConfig: the weight of each loss term
    preserve:   {...}              # PreserveConfig: the text read with a memory to keep general ability
    optim:      {...}              # OptimConfig: steps, batch, learning rates per parameter group
    run:        {...}              # RunConfig: where, seed, checkpoints, time limit, device

Every section is a dataclass; unknown keys and values of the wrong type or range are errors that name
the key (`data.facts`), so a typo in a recipe fails before anything loads.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field

from ..adapter import DeltaMemConfig


class RecipeError(ValueError):
    """A recipe key is unknown, of the wrong type or out of range; the message names it."""


@dataclass
class DataConfig:
    """Episodes: a conversation written into memory, then questions and continuations read back.

    sources: mixture weights: `chats` (generated multi-session chats: varied names, places, facts, phrasings
        and small talk, see `train/chats.py`) and `locomo` (real conversations of `locomo_path`, whole).
    locomo_path: a LoCoMo-format file; its `locomo_conversations` give small talk to `chats` and whole
        conversations to `locomo`.
    facts: range of personal facts stated in one generated chat.
    sessions / turns: range of sessions per chat and of small-talk turns per session.
    queries: reads per written history (its questions and continuations share one write pass).
    continuation: share of reads that continue the conversation (its next turn) instead of a question.
    window: share of reads that keep the last `window_tokens` of history in the prompt (window+memory).
    window_tokens: range of that window's size in tokens (whole messages).
    max_write_tokens: most history tokens written with gradient (the history's last messages that fit).
    max_history_tokens: most history tokens kept (its last messages that fit; null = `max_write_tokens`):
        what lies before the last `max_write_tokens` is written first, without gradient.
    max_read_tokens: most tokens of one read (the teacher's prompt holds the history on top).
    """

    sources: dict = field(default_factory=lambda: {"chats": 1.0})
    locomo_path: str | None = None
    locomo_conversations: list = field(default_factory=list)
    facts: list = field(default_factory=lambda: [1, 3])
    sessions: list = field(default_factory=lambda: [2, 4])
    turns: list = field(default_factory=lambda: [2, 8])
    queries: int = 2
    continuation: float = 0.25
    window: float = 0.3
    window_tokens: list = field(default_factory=lambda: [64, 256])
    max_write_tokens: int = 768
    max_history_tokens: int | None = None
    max_read_tokens: int = 160

    def check(self):
        known = {"chats", "locomo"}
        if not self.sources or set(self.sources) - known or any(
                not isinstance(w, (int, float)) or w < 0 for w in self.sources.values()) or not any(self.sources.values()):
            raise RecipeError(f"data.sources must map some of {sorted(known)} to non-negative weights (one > 0), "
                              f"got {self.sources}")
        if (self.sources.get("locomo") or self.locomo_conversations) and not (self.locomo_path and self.locomo_conversations):
            raise RecipeError("data.locomo_path and data.locomo_conversations must both be set when the locomo "
                              "source or LoCoMo small talk is used")
        for name in ("facts", "sessions", "turns", "window_tokens"):
            _range(f"data.{name}", getattr(self, name), 1 if name != "turns" else 0)
        for name in ("queries", "max_write_tokens", "max_read_tokens"):
            _at_least(f"data.{name}", getattr(self, name), 1)
        for name in ("continuation", "window"):
            _share(f"data.{name}", getattr(self, name))
        if self.max_history_tokens is not None:
            _at_least("data.max_history_tokens", self.max_history_tokens, self.max_write_tokens)


@dataclass
class ObjectivesConfig:
    """The weight of each loss term (0 = off); see `train/objectives.py`.

    distill: KL(teacher || student) on every read token: the teacher is the frozen backbone with the
        whole history in its prompt, the student the same backbone with the history in memory only (or
        with only its last `window_tokens` in the prompt).
    answer_ce: cross-entropy of the gold answer of questions that have one.
    contrast / contrast_margin: a hinge on gold answers, `max(0, margin + CE(own memory) - CE(another
        episode's memory))`: what any memory gives (a format prior) earns nothing; only what this
        history's memory adds over another's lowers it. Needs two episodes or more per micro-batch.
    contrast_detach: read another episode's memory without gradient, so that the hinge can fall only by
        making the own memory's answer likelier, not by making another memory's answer less likely.
    gate_reg / gate_target: `gate_reg * (mean write-pass gate - gate_target)^2` (docs/design.md section 5).
    """

    distill: float = 1.0
    answer_ce: float = 0.0
    contrast: float = 0.0
    contrast_margin: float = 1.0
    contrast_detach: bool = False
    gate_reg: float = 0.01
    gate_target: float = 0.05

    def check(self):
        for f in dataclasses.fields(self):
            _at_least(f"objectives.{f.name}", getattr(self, f.name), 0)
        _share("objectives.gate_target", self.gate_target)


@dataclass
class PreserveConfig:
    """KL(frozen backbone || backbone + the episode's memory) on text unrelated to the memory.

    weight: the term's weight (0 = off). tokens: tokens per row. chat: share of rows that are a chat
    exchange (the LoCoMo conversations' turns as user/assistant) rather than plain text.
    """

    weight: float = 0.0
    tokens: int = 128
    chat: float = 0.5

    def check(self):
        _at_least("preserve.weight", self.weight, 0)
        _at_least("preserve.tokens", self.tokens, 8)
        _share("preserve.chat", self.chat)


GROUPS = ("project", "gates", "read")


@dataclass
class OptimConfig:
    """AdamW with a warmup-then-cosine schedule.

    lr_scale: a learning-rate multiplier per parameter group the adapter names (`DeltaMem.param_groups`):
        `project` (W: the q/k/v/gate projections), `gates` (the gate biases c_b), `read` (U, the corrections).
    batch_size: episodes per optimizer step over all ranks; grad_accum micro-batches per rank.
    """

    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: float = 0.1
    grad_clip: float = 1.0
    lr_scale: dict = field(default_factory=dict)

    def check(self):
        for name in ("steps", "batch_size", "grad_accum"):
            _at_least(f"optim.{name}", getattr(self, name), 1)
        if self.batch_size % self.grad_accum:
            raise RecipeError(f"optim.batch_size ({self.batch_size}) must be a multiple of optim.grad_accum "
                              f"({self.grad_accum})")
        _at_least("optim.lr", self.lr, 0)
        _share("optim.warmup", self.warmup)
        bad = sorted(set(self.lr_scale) - set(GROUPS))
        if bad or any(not isinstance(v, (int, float)) or v <= 0 for v in self.lr_scale.values()):
            raise RecipeError(f"optim.lr_scale maps {list(GROUPS)} to positive multipliers, got {self.lr_scale}")


@dataclass
class RunConfig:
    """out_dir: where checkpoints, the log and the adapter go (a chain puts each stage in a subfolder).
    eval_every / eval_conversations: validation on held-out synthetic chats (`deltamem eval synthetic`).
    max_minutes: wall-time budget from set-up on; the run stops cleanly (checkpoint, adapter) when spent.
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"."""

    out_dir: str = "runs/train"
    seed: int = 0
    eval_every: int = 50
    eval_conversations: int = 16
    checkpoint_every: int = 25
    max_minutes: float | None = None
    threads: int | None = None
    device: str = "auto"

    def check(self):
        for name in ("eval_every", "eval_conversations", "checkpoint_every"):
            _at_least(f"run.{name}", getattr(self, name), 1)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise RecipeError(f"run.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


SECTIONS = {"data": DataConfig, "objectives": ObjectivesConfig, "preserve": PreserveConfig,
            "optim": OptimConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    """One training stage: the backbone, where the adapter starts, and the five sections."""

    backbone: str | None = None
    init: str | None = None
    adapter: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    preserve: PreserveConfig = field(default_factory=PreserveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        for name in ("backbone", "init"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise RecipeError(f"{name} must be a path or null, got {getattr(self, name)!r}")
        if not isinstance(self.adapter, dict):
            raise RecipeError(f"adapter must be a mapping of DeltaMemConfig fields, got {self.adapter!r}")
        self.adapter_config()
        if self.preserve.weight > 0 and not (self.data.locomo_path and self.data.locomo_conversations):
            raise RecipeError("preserve.weight > 0 reads the text of data.locomo_conversations: set them "
                              "and data.locomo_path")

    def adapter_config(self) -> DeltaMemConfig:
        try:
            return DeltaMemConfig.from_dict(self.adapter)
        except (ValueError, TypeError) as e:
            raise RecipeError(f"adapter: {e}") from None

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> "TrainConfig":
        """Build from a plain mapping (a merged recipe); every key is checked against its section."""
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: a recipe must be a mapping")
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - top)
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {', '.join(unknown)}; a recipe has {', '.join(sorted(top))}")
        kw = {k: v for k, v in data.items() if k not in SECTIONS}
        for name, section in SECTIONS.items():
            kw[name] = _section(section, data.get(name) or {}, name)
        try:
            return cls(**kw)
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _section(cls, values, name: str):
    if not isinstance(values, dict):
        raise RecipeError(f"{name} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in fields:
            raise RecipeError(f"unknown key {name}.{key}; {name} has {', '.join(fields)}")
        if not _matches(value, hints[key]):
            raise RecipeError(f"{name}.{key} must be {_type_name(hints[key])}, got {value!r}")
    out = cls(**values)
    out.check()
    return out


def _range(key, v, lo):
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            and lo <= v[0] <= v[1]):
        raise RecipeError(f"{key} must be a range [low, high] of ints with {lo} <= low <= high, got {v!r}")


def _at_least(key, v, lo):
    if v < lo:
        raise RecipeError(f"{key} must be >= {lo}, got {v!r}")


def _share(key, v):
    if not 0.0 <= v <= 1.0:
        raise RecipeError(f"{key} must be in [0, 1], got {v!r}")


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _matches(v, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_matches(v, a) for a in typing.get_args(hint))
    if hint is type(None):
        return v is None
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, origin or hint)
