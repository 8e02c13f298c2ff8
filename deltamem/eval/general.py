"""General ability kept: plain-text perplexity and a small QA set, each with and without δ-mem.

The "history" is unrelated text (it has nothing to do with the questions), so
a method that uses it can only keep or lose general ability: `none` is the
frozen backbone, `delta-mem` answers with a memory written from that text.
Perplexity is measured on held-out plain text (LoCoMo conversations when the
file is there, else the built-in paragraphs below) with the bare backbone and
with the memory bound read-only.
"""

from __future__ import annotations

import math
import os

import torch

from .items import Conversation, Item

QA = [  # (question, acceptable answers)
    ("What is the capital of France?", ["Paris"]), ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]), ("What is the capital of Germany?", ["Berlin"]),
    ("What is the capital of Spain?", ["Madrid"]), ("What is the capital of the United Kingdom?", ["London"]),
    ("How many days are in a week?", ["seven", "7"]), ("How many legs does a spider have?", ["eight", "8"]),
    ("What is 2 plus 3?", ["five", "5"]), ("What is 10 minus 4?", ["six", "6"]),
    ("What colour is the sky on a clear day?", ["blue"]), ("What do bees make?", ["honey"]),
    ("Which planet do we live on?", ["Earth"]), ("What is frozen water called?", ["ice"]),
    ("Which animal is known as the king of the jungle?", ["lion"]), ("What gas do plants absorb from the air?",
                                                                     ["carbon dioxide", "CO2"]),
    ("Which is the largest ocean on Earth?", ["Pacific"]), ("How many hours are in a day?", ["24", "twenty-four"]),
    ("What is the opposite of hot?", ["cold"]), ("Which star is at the centre of our solar system?", ["Sun"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]), ("What is the boiling point of water in Celsius?", ["100"]),
    ("Which fruit is yellow and curved?", ["banana"]), ("What is the chemical symbol for gold?", ["Au"]),
]
QA_PROMPT = "Answer the question with a short answer.\n\nQuestion: {}\nAnswer:"

MEMORY_TEXT = [  # unrelated chat, written into memory
    "I spent the weekend repainting the fence in the back garden; it took three coats.",
    "My cousin is training for a marathon and runs every morning before work.",
    "We tried a new bakery on the corner, the sourdough was excellent.",
    "The train to the coast was delayed by an hour because of a signal failure.",
    "I am reading a long novel about a family of clockmakers in the nineteenth century.",
    "Our book club meets on Thursdays; this month we argued about the ending for an hour.",
    "The kids built a cardboard rocket and painted it silver and red.",
    "I finally fixed the squeaky door in the hallway with a bit of oil.",
]
PLAIN_TEXT = [  # held-out plain text for perplexity when no LoCoMo file is given
    "The river runs through the middle of the town, and on summer evenings people walk along its banks. "
    "Small boats are tied to wooden posts, and children throw bread to the ducks that gather near the bridge.",
    "Learning a new language takes patience. At first every sentence is a puzzle, but after a few months the "
    "words begin to feel familiar, and one day you notice that you understood a conversation without effort.",
    "The museum opened a new exhibition about ancient maps. Visitors can see how sailors once imagined the "
    "shape of the world, with sea monsters drawn in the empty spaces where nobody had travelled yet.",
]


def load_general(path: str | None = None) -> list[Conversation]:
    """The QA set (normalised substring scoring) after unrelated chat: first the built-in chat ("general", the
    default), then each LoCoMo conversation of `path` when it is a LoCoMo file (`--conversations conv-41`
    asks the same questions after a whole real conversation has been written)."""
    items = [Item(f"qa{i}", QA_PROMPT.format(q), a, "qa", query=q, match="any") for i, (q, a) in enumerate(QA)]
    convs = [Conversation("general", [{"role": "user", "content": t} for t in MEMORY_TEXT], items)]
    if path and os.path.exists(path):
        from ..data.locomo import load_locomo, locomo_messages

        try:
            samples = load_locomo(path)
        except ValueError:  # not a LoCoMo file: the built-in chat only
            samples = []
        convs += [Conversation(str(x["sample_id"]), locomo_messages(x, path), items) for x in samples]
    return convs


def plain_texts(path: str | None, conversations: tuple[str, ...] = ("conv-43", "conv-44"), turns: int = 60) -> list[str]:
    """Held-out plain text: LoCoMo sessions (`Speaker: text` lines) when `path` is a LoCoMo file, else built-in."""
    if path and os.path.exists(path):
        from ..data.locomo import locomo_plain_texts

        texts = locomo_plain_texts(path, list(conversations), turns)
        if texts:
            return texts
    return list(PLAIN_TEXT)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], state=None, max_tokens: int = 512) -> dict:
    """Token-weighted perplexity of `texts` (each cut to `max_tokens`), with `state` bound read-only when given."""
    from ..adapter import use_memory

    dev = next(model.parameters()).device
    nll, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], device=dev)
        if state is None:
            loss = model(input_ids=x, labels=x).loss
        else:
            with use_memory(model, state, write=False):
                loss = model(input_ids=x, labels=x).loss
        nll += float(loss) * (len(ids) - 1)
        count += len(ids) - 1
    return {"perplexity": math.exp(nll / max(count, 1)), "tokens": count}
