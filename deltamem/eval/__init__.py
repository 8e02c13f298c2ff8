"""Evaluation: LoCoMo, MemoryAgentBench and held-out synthetic chats against memory baselines, general skills,
reports and plots.

Python entries: `evaluate(model, tokenizer, suite, conversations, method, condition, ...)` for a model held
in memory (training's validation; returns this run's score and answer CE), `run_eval(model, tokenizer,
EvalSpec(...))` for what `deltamem eval` does (results folder and reports).
"""

from .items import Conversation, Item
from .locomo import score
from .runner import EvalSpec, evaluate, run_eval
from .synthetic import heldout_conversations

__all__ = ["score", "EvalSpec", "run_eval", "evaluate", "Conversation", "Item", "heldout_conversations"]
