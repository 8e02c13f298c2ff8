"""Runtime: loading backbones, memory sessions, generation."""

from .backbone import load_backbone
from .generate import GenerationConfig, kv_cache_bytes
from .session import MemorySession

__all__ = ["load_backbone", "MemorySession", "GenerationConfig", "kv_cache_bytes"]
