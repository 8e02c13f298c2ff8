"""Evaluation: LoCoMo and MemoryAgentBench against memory baselines, general skills, reports and plots."""

from .locomo import score
from .runner import EvalSpec, run_eval

__all__ = ["score", "EvalSpec", "run_eval"]
