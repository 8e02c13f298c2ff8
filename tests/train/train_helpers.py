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
TINY_TRAIN = dict(
    adapter={"rank": 4, "alpha": 8.0, "heads": ["q", "o"], "update_mode": "no_decay", "gate_bias_init": -3.0},
    sources={"synthetic": 0.6, "updates": 0.2, "key_value": 0.2},
    filler_turns=[0, 2], max_write_tokens=256, max_read_tokens=96, steps=2, batch_size=2,
    eval_every=1000, eval_episodes=4, checkpoint_every=1000, seed=0,
)


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
