"""`TrainConfig`: a training recipe (YAML under configs/train/), validated field by field."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field

import yaml

from ..adapter import DeltaMemConfig


@dataclass
class TrainConfig:
    """Everything a run needs. Unknown keys and wrong types are errors that name the key."""

    out_dir: str = "runs/train"
    backbone: str | None = None  # None = the embedded SmolLM2-135M-Instruct
    adapter: dict = field(default_factory=dict)  # DeltaMemConfig fields
    init_adapter: str | None = None  # start from a saved adapter (e.g. a curriculum stage)
    # data: mixture weights over sources, and their knobs
    sources: dict = field(default_factory=lambda: {"synthetic": 1.0})
    facts_per_episode: list = field(default_factory=lambda: [1, 3])
    filler_turns: list = field(default_factory=lambda: [0, 6])  # final range
    curriculum_start: list = field(default_factory=lambda: [0, 0])  # filler range at step 0
    curriculum_steps: int = 0  # steps over which filler grows to `filler_turns` (0 = none)
    novel_values: float = 0.0  # share of synthetic/update values that are made-up words (must be copied)
    vocab_values: float = 0.0  # share that are real words from the backbone's vocabulary (held-out values removed)
    blend_values: float = 0.0  # share of the rest spliced from two such words (multi-token, real spelling)
    class_values: float = 0.0  # share taken first from vocabulary words near the attribute's own pool ("dietitian")
    generic_templates: float = 0.0  # share of statements/questions from attribute-generic phrasings
    varied_templates: float = 0.0  # share of those from the wider pool (more frames, synonym nouns)
    locomo_path: str | None = None
    locomo_conversations: list = field(default_factory=list)
    recent_messages: int = 0
    max_write_tokens: int = 512
    max_read_tokens: int = 128
    # answer tokens as the value appears inside a sentence (" pharmacist", one token) instead of at the start of
    # the reply ("ph" "armac" "ist"): the read then emits the very tokens the write stored
    answer_space: bool = False
    system_prompt: str | None = None
    # optimisation
    steps: int = 300
    batch_size: int = 8  # episodes per optimizer step (all ranks together)
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gate_reg: float = 0.01
    gate_target: float = 0.05
    gate_lr_scale: float = 1.0  # learning-rate multiplier for the write gates' parameters (W_b rows, c_b)
    copy_lr_scale: float = 1.0  # learning-rate multiplier for the copy path: the W_v rows and U_o
    gate_supervision: float = 0.0  # balanced BCE weight: write gates high on stated values' tokens, low elsewhere
    # fact-specific distillation: each layer's (own - mismatched memory) output difference at the answer
    # positions should equal the frozen backbone's (own - mismatched history in the prompt) difference
    distill: float = 0.0
    contrastive: float = 0.0  # weight of relu(margin - (CE_mismatched - CE_own))
    contrastive_margin: float = 1.0
    # keep general ability: KL(frozen backbone || backbone + memory) on plain text read with an episode's memory
    preserve: float = 0.0
    preserve_conversations: list = field(default_factory=list)  # LoCoMo ids whose turns are the plain text
    preserve_tokens: int = 128  # tokens per plain-text chunk; one chunk per episode
    preserve_plain_memory: float = 0.0  # share of those rows read with a memory written from 4 other chunks
    preserve_chat: float = 0.0  # share of rows that are a chat-template exchange (its reply) instead of plain text
    preserve_qa: float = 0.0  # share of rows that are a general question and the frozen backbone's own reply
    # share of rows read with a memory of a long real conversation (a snapshot of one of preserve_conversations
    # written message by message up to long_memory_tokens, then one chat exchange written with gradients)
    preserve_long_memory: float = 0.0
    long_memory_tokens: int = 4096
    long_memory_every: int = 256  # tokens between snapshots
    long_memory_refresh: int = 0  # steps between rewrites of the snapshots with the current weights (0: once)
    seed: int = 0
    # bookkeeping
    eval_every: int = 50
    eval_episodes: int = 32
    checkpoint_every: int = 25
    max_minutes: float | None = None  # wall-time budget from the trainer's set-up on (backbone replies, snapshots)
    threads: int | None = None
    device: str = "auto"  # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"

    def __post_init__(self):
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not _matches(v, hints[f.name]):
                raise ValueError(f"recipe key {f.name!r} must be {hints[f.name]}, got {v!r}")
        for name in ("steps", "batch_size", "grad_accum", "max_write_tokens", "max_read_tokens", "eval_episodes",
                     "checkpoint_every", "eval_every", "preserve_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe key {name!r} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"recipe key 'batch_size' ({self.batch_size}) must be a multiple of grad_accum "
                             f"({self.grad_accum})")
        known = {"synthetic", "updates", "key_value", "locomo"}
        bad = sorted(set(self.sources) - known)
        if bad or not self.sources or any(not isinstance(w, (int, float)) or w < 0 for w in self.sources.values()):
            raise ValueError(f"recipe key 'sources' must map {sorted(known)} to non-negative weights, got {self.sources}")
        if "locomo" in self.sources and not (self.locomo_path and self.locomo_conversations):
            raise ValueError("recipe key 'locomo_conversations' must name the training conversations when 'locomo' "
                             "is a source (and 'locomo_path' the file)")
        if self.preserve > 0 and not (self.locomo_path and self.preserve_conversations):
            raise ValueError("recipe key 'preserve_conversations' must name LoCoMo conversations (and 'locomo_path' "
                             "the file) when 'preserve' > 0")
        if self.gate_supervision < 0:
            raise ValueError(f"recipe key 'gate_supervision' must be >= 0, got {self.gate_supervision}")
        if self.gate_supervision > 0 and self.adapter.get("write_granularity", "token") != "token":
            raise ValueError("recipe key 'gate_supervision' needs token writes (adapter.write_granularity: token)")
        for name in ("preserve_plain_memory", "preserve_chat", "preserve_qa", "preserve_long_memory"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"recipe key {name!r} must be in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.long_memory_every <= self.long_memory_tokens:
            raise ValueError(f"recipe keys 'long_memory_every' ({self.long_memory_every}) and 'long_memory_tokens' "
                             f"({self.long_memory_tokens}) need 1 <= long_memory_every <= long_memory_tokens")
        if self.long_memory_refresh < 0:
            raise ValueError(f"recipe key 'long_memory_refresh' must be >= 0, got {self.long_memory_refresh}")
        if self.distill < 0:
            raise ValueError(f"recipe key 'distill' must be >= 0, got {self.distill}")
        for name in ("gate_lr_scale", "copy_lr_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"recipe key {name!r} must be > 0, got {getattr(self, name)}")
        for name in ("novel_values", "vocab_values", "blend_values", "class_values", "generic_templates",
                     "varied_templates"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"recipe key {name!r} must be in [0, 1], got {getattr(self, name)}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"recipe key 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        self.adapter_config()  # validates the adapter fields, naming any bad one

    def adapter_config(self) -> DeltaMemConfig:
        try:
            return DeltaMemConfig.from_dict(self.adapter)
        except (ValueError, TypeError) as e:
            raise ValueError(f"recipe key 'adapter': {e}") from None

    @classmethod
    def from_yaml(cls, path: str, overrides: dict | None = None) -> "TrainConfig":
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe must be a YAML mapping")
        for key, value in (overrides or {}).items():
            set_path(data, key, value)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe key(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def set_path(data: dict, dotted: str, raw: str) -> None:
    """Apply an override `adapter.rank=4` style: the value is parsed as YAML."""
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value


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
    base = origin or hint
    return isinstance(v, base)
