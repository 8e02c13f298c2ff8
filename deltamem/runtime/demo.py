"""`deltamem demo`: write a short multi-session conversation into memory and ask about it."""

from __future__ import annotations

import textwrap

from ..adapter import MemoryState
from .generate import kv_cache_bytes
from .model_setup import SHIPPED_ADAPTER
from .session import MemorySession

CONVERSATION = [
    {"role": "user", "name": "Maya", "timestamp": "3 March 2026",
     "content": "Hi! I'm Maya. Big news: I adopted a grey kitten and named her Pixel."},
    {"role": "assistant", "content": "Congratulations, Maya! Pixel is a lovely name for a grey kitten."},
    {"role": "user", "name": "Maya", "timestamp": "3 March 2026",
     "content": "Thanks. The weather was awful today, rain all afternoon."},
    {"role": "assistant", "content": "Sorry to hear that. A quiet evening with Pixel sounds good then."},
    {"role": "user", "name": "Maya", "timestamp": "19 April 2026",
     "content": "I started a new job last week: I'm a nurse at Lakeside Hospital now."},
    {"role": "assistant", "content": "That's great news! Nursing at Lakeside must keep you busy."},
    {"role": "user", "name": "Maya", "timestamp": "2 June 2026",
     "content": "I've been learning to play the cello on weekends. My teacher is called Mr. Okafor."},
    {"role": "assistant", "content": "The cello is a beautiful instrument. Enjoy the lessons with Mr. Okafor!"},
    {"role": "user", "name": "Maya", "timestamp": "2 June 2026",
     "content": "We also had a long meeting about the new parking rules at work. Nothing exciting."},
    {"role": "assistant", "content": "Parking rules are rarely exciting. Let me know if anything changes."},
]
QUESTIONS = [
    "What is the name of Maya's cat?",
    "Where does Maya work?",
    "Which instrument is Maya learning?",
    "What is the name of Maya's music teacher?",
]
ANSWER_HINT = " Answer in a few words."


def run_demo(model, tokenizer, adapter_note: str, max_new_tokens: int = 24) -> dict:
    """Write `CONVERSATION`, then answer `QUESTIONS` three ways; print a table; return the results."""
    print(f"δ-mem demo on {model.config.model_type} ({model.config.num_hidden_layers} layers) with {adapter_note}\n")
    memory = MemorySession(model, tokenizer, window_tokens=0, progress=True)
    written = memory.write(CONVERSATION)
    full = MemorySession(model, tokenizer, window_tokens=10**9)  # transcript in the prompt, empty memory
    full.transcript, full._tokens = memory.transcript, memory._tokens
    blank = MemorySession(model, tokenizer, window_tokens=0)  # no memory, no transcript
    rows = []
    for q in QUESTIONS:
        ask = q + ANSWER_HINT
        rows.append({"question": q,
                     "no memory": blank.ask(ask, max_new_tokens=max_new_tokens),
                     "memory only": memory.ask(ask, max_new_tokens=max_new_tokens),
                     "full transcript": full.ask(ask, max_new_tokens=max_new_tokens)})
    _print_table(rows, ["question", "no memory", "memory only", "full transcript"])
    transcript_tokens = sum(len(t) for t in memory._tokens)
    state_bytes = memory.state.nbytes
    kv = kv_cache_bytes(model, transcript_tokens)
    print(f"\nmemory written: {len(CONVERSATION)} messages, {written} tokens -> state of {state_bytes:,} bytes "
          f"({len(memory.state.to_bytes()):,} bytes as a file)")
    print(f"the same transcript as a KV cache: {transcript_tokens} tokens -> {kv:,} bytes "
          f"({kv / state_bytes:.0f}x the memory state)")
    print("memory-only answers reach the model through the 8x8 states alone; how often the shipped adapter "
          f"recalls the right fact is measured in adapters/{SHIPPED_ADAPTER}/TRAINING.md")
    return {"rows": rows, "state_bytes": state_bytes, "kv_cache_bytes": kv, "tokens_written": written}


def _print_table(rows: list[dict], cols: list[str], width: int = 26) -> None:
    def cells(row):
        return [textwrap.wrap(str(row[c]).replace("\n", " ") or "-", width) or ["-"] for c in cols]

    line = "+" + "+".join("-" * (width + 2) for _ in cols) + "+"
    print(line)
    for r, row in enumerate([{c: c for c in cols}] + rows):
        parts = cells(row)
        for i in range(max(len(p) for p in parts)):
            print("| " + " | ".join((p[i] if i < len(p) else "").ljust(width) for p in parts) + " |")
        print(line)


__all__ = ["run_demo", "CONVERSATION", "QUESTIONS", "MemoryState"]
