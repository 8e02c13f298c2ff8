"""Constants and helpers shared by the training tests (a uniquely named module: every test folder
has its own conftest.py, so test modules must not `import conftest`)."""

from __future__ import annotations

import os

import torch

VOCAB = 49152
EOS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# small everything: a training step on the tiny model takes well under a second
TINY = {
    "adapter": {"rank": 4, "alpha": 8.0, "heads": ["q", "o"], "num_state_heads": 2, "update_mode": "no_decay",
                "gate_bias_init": -3.0},
    "data": {"sessions": [1, 2], "turns": [0, 3], "queries": 2, "max_write_tokens": 256, "max_read_tokens": 200},
    "optim": {"steps": 2, "batch_size": 2},
    "run": {"eval_every": 1000, "eval_conversations": 4, "checkpoint_every": 1000, "device": "cpu"},
}


def tiny_overrides(backbone: str, locomo: str) -> dict:
    """`--set`-style overrides that shrink any shipped stage to the tiny model: 2 steps, short reads,
    the test's own LoCoMo fixture instead of the shared data."""
    return {"backbone": backbone, "data.locomo_path": locomo, "data.locomo_conversations": "[conv-x, conv-y]",
            "data.max_write_tokens": "256", "data.max_read_tokens": "200", "data.sessions": "[1, 2]",
            "data.turns": "[0, 3]", "optim.steps": "2", "optim.batch_size": "2", "optim.grad_accum": "1",
            "run.eval_every": "1000", "run.eval_conversations": "4", "run.checkpoint_every": "1000",
            "run.device": "cpu", "run.max_minutes": "null", "preserve.tokens": "16"}


def adapter_params(trainer) -> dict[str, torch.Tensor]:
    """A detached copy of every δ-mem parameter of a trainer's model."""
    return {k: v.detach().clone() for k, v in trainer.model.delta_mem.named_parameters()}


def locomo_fixture() -> list[dict]:
    """A small hand-made sample in the LoCoMo layout (conv-x: two sessions, every QA rule; conv-y: tiny)."""

    def turns(session: int, n: int):
        return [{"speaker": "Ann" if i % 2 == 0 else "Bob", "dia_id": f"D{session}:{i + 1}",
                 "text": f"session {session} turn {i + 1} says marker-{session}-{i + 1}"} for i in range(n)]

    conv = {"speaker_a": "Ann", "speaker_b": "Bob",
            "session_1_date_time": "1 May 2023", "session_1": turns(1, 6),
            "session_2_date_time": "8 May 2023", "session_2": turns(2, 6)}
    qa = [
        {"question": "q-early", "answer": "a1", "evidence": ["D1:2"], "category": 1},
        {"question": "q-late", "answer": 2023, "evidence": ["D2:5"], "category": 2},
        {"question": "q-two", "answer": "a3", "evidence": ["D1:3", "D2:2"], "category": 4},
        {"question": "q-span-too-long", "answer": "a4", "evidence": ["D1:1", "D2:6"], "category": 3},
        {"question": "q-unknown-evidence", "answer": "a5", "evidence": ["D9:9"], "category": 1},
        {"question": "q-adversarial", "answer": "a6", "evidence": ["D1:4"], "category": 5},
        {"question": "q-no-answer", "evidence": ["D1:4"], "category": 1},
    ]
    other = {"speaker_a": "Cy", "speaker_b": "Di", "session_1_date_time": "2 June 2023",
             "session_1": [{"speaker": "Cy", "dia_id": "D1:1", "text": "other conversation"}]}
    return [{"sample_id": "conv-x", "conversation": conv, "qa": qa},
            {"sample_id": "conv-y", "conversation": other,
             "qa": [{"question": "q-other", "answer": "o", "evidence": ["D1:1"], "category": 1}]}]
