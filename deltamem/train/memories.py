"""Memories of long real conversations for the preservation term.

Training episodes write at most a few hundred tokens; a user's memory holds a whole conversation, tens
of thousands of tokens of two people chatting. Bound to such a memory, an adapter trained only on short
histories turns "What is the capital of France?" into a one-word guess. `conversation_memories` writes
whole conversations message by message through `MemorySession.write` (the same write path as
inference) and keeps a snapshot of the state every `every` tokens; `preserve_long_memory` rows read the
preservation text with one of these snapshots, continued by one chat exchange written with gradients.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from ..adapter import MemoryState


def conversation_memories(model, tokenizer, conversations: list[list[dict]], max_tokens: int, every: int,
                          system_prompt: str, progress: bool = False) -> list[MemoryState]:
    """Snapshots (batch 1, detached) of the memory of each conversation in `conversations` (chat messages),
    one after the first message that brings the written total to each multiple of `every`, up to
    `max_tokens` per conversation."""
    from ..runtime.session import MemorySession

    if every < 1 or max_tokens < every:
        raise ValueError(f"conversation memories need 1 <= every ({every}) <= max_tokens ({max_tokens})")
    was_training = model.training
    model.eval()
    out: list[MemoryState] = []
    bar = tqdm(total=max_tokens * len(conversations), unit="tok", desc="conversation memories", disable=not progress)
    try:
        for messages in conversations:
            session = MemorySession(model, tokenizer, system_prompt=system_prompt)
            mark = every
            for m in messages:
                before = session.tokens_written
                session.write([m])  # the session keeps a message's role, content, name and timestamp
                bar.update(min(session.tokens_written, max_tokens) - min(before, max_tokens))
                if session.tokens_written >= mark:
                    out.append(session.state.clone())
                    mark = (session.tokens_written // every + 1) * every
                if session.tokens_written >= max_tokens:
                    break
    finally:
        bar.close()
        model.train(was_training)
    return out
