"""deltamem: a compact, trainable, online memory (δ-mem) for frozen Hugging Face causal LMs."""

from .adapter import (DeltaMemConfig, MemoryState, adapter_fingerprint, attach_delta_mem, backbone_fingerprint,
                      load_adapter, parameter_counts, save_adapter, use_memory)

from .runtime import GenerationConfig, MemorySession, load_backbone

__version__ = "0.1.0"

__all__ = ["DeltaMemConfig", "MemoryState", "attach_delta_mem", "use_memory", "save_adapter", "load_adapter",
           "parameter_counts", "backbone_fingerprint", "adapter_fingerprint", "MemorySession", "load_backbone",
           "GenerationConfig", "__version__"]
