"""LoCoMo (snap-research/locomo): the official per-question scorer, question prompts, and loading.

Scoring follows `task_eval/evaluation.py` (docs/design.md section 6):
lower-case, drop commas and punctuation, drop a/an/the/and, Porter-stem,
token F1. Category 1 (multi-hop) splits prediction and gold on commas and
averages, over the gold parts, the best F1 against any predicted part;
categories 2 (temporal), 3 (open-domain, gold cut at the first `;`) and 4
(single-hop) are plain F1; category 5 (adversarial) scores 1 when the output
says "no information available" or "not mentioned".

Question prompts and answer post-processing follow the official evaluation of
open Hugging Face models (`task_eval/evaluate_llama2.py`): category 2 gets the
date hint; category 5 becomes a choice "(a) ... (b) ..." between "No
information available" and the adversarial answer (the order is a fixed coin
per question), and the reply is mapped to the option text ("(a)" in the reply
picks option a, anything else option b); other replies keep their first line,
with "(a)", "(b)", "answer:" stripped.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections import Counter
from functools import lru_cache
from pathlib import Path

from .items import Conversation, Item

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
DATE_HINT = " Use DATE of CONVERSATION to answer with an approximate date."
NO_INFO = "No information available"
CAT_5 = " (a) {} (b) {}. Select the correct answer by writing (a) or (b)."
QA_PROMPT = ("Based on the above conversations, write a short answer for the following question in a few words. Do not "
             "write complete and lengthy sentences. Answer with exact words from the conversations whenever "
             "possible.\n\nQuestion: {}")
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")


@lru_cache(maxsize=1)
def _stemmer():
    try:
        from nltk.stem import PorterStemmer
    except ImportError:
        raise ImportError("the LoCoMo scorer needs nltk (the official Porter stemmer): pip install nltk "
                          "(or pip install 'deltamem[eval]')") from None
    return PorterStemmer()


def normalize_answer(s: str) -> str:
    """Lower-case, drop commas and punctuation, drop a/an/the/and, collapse whitespace."""
    s = s.replace(",", "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 between the stemmed, normalised texts (0 when either side is empty)."""
    ps = _stemmer()
    pred = [ps.stem(w) for w in normalize_answer(prediction).split()]
    ref = [ps.stem(w) for w in normalize_answer(gold).split()]
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, answer: str, category: int) -> float:
    """The official LoCoMo score of one prediction, in [0, 1]. An empty prediction scores 0."""
    prediction, answer = str(prediction), str(answer)
    if category == 3:
        answer = answer.split(";")[0].strip()
    if category in (2, 3, 4):
        return f1_score(prediction, answer)
    if category == 1:
        preds = [p.strip() for p in prediction.split(",")]
        golds = [g.strip() for g in answer.split(",")]
        return sum(max(f1_score(p, g) for p in preds) for g in golds) / len(golds)
    if category == 5:
        low = prediction.lower()
        return 1.0 if ("no information available" in low or "not mentioned" in low) else 0.0
    raise ValueError(f"LoCoMo category must be 1-5, got {category!r}")


def category_5_options(item_id: str, adversarial_answer: str) -> dict:
    """Options (a) and (b) of a category-5 question: "No information available" first or second by a coin
    fixed per question."""
    first = int(hashlib.sha256(item_id.encode()).hexdigest(), 16) % 2 == 0
    return {"a": NO_INFO, "b": adversarial_answer} if first else {"a": adversarial_answer, "b": NO_INFO}


def question_prompt(question: str, category: int, item_id: str, adversarial_answer: str = "") -> str:
    """The official question text: date hint for category 2, a two-option choice for category 5."""
    if category == 2:
        question += DATE_HINT
    if category == 5:
        opts = category_5_options(item_id, adversarial_answer)
        question += CAT_5.format(opts["a"], opts["b"])
    return QA_PROMPT.format(question)


def postprocess(reply: str, category: int, options: dict | None = None) -> str:
    """The official answer clean-up: first line; category 5 mapped to the chosen option's text."""
    lines = [w.strip() for w in reply.replace('\\"', "'").strip().split("\n") if w.strip()]
    answer = lines[0] if lines else ""
    if category == 5 and options:
        return options["a"] if "(a)" in answer.lower() else options["b"]
    return answer.lower().replace("(a)", "").replace("(b)", "").replace("a)", "").replace("b)", "") \
        .replace("answer:", "").strip()


def _qa_items(sample: dict, path: str, index: int) -> list[Item]:
    sid = str(sample["sample_id"])
    items = []
    for j, qa in enumerate(sample.get("qa", [])):
        where = f"{path}: sample [{index}] ({sid}) qa[{j}]"
        if not isinstance(qa, dict):
            raise ValueError(f"{where} must be an object")
        if not isinstance(qa.get("question"), str) or not qa["question"].strip():
            raise ValueError(f"{where} field 'question' must be a non-empty string")
        cat = qa.get("category")
        if cat not in CATEGORIES:
            raise ValueError(f"{where} field 'category' must be 1-5, got {cat!r}")
        key = "adversarial_answer" if cat == 5 and "answer" not in qa else "answer"
        if key not in qa or not isinstance(qa[key], (str, int, float)):
            raise ValueError(f"{where} field '{key}' is missing or not a string/number")
        gold = str(qa[key])
        item_id = f"{sid}:q{j}"
        adversarial = str(qa.get("adversarial_answer", gold)) if cat == 5 else ""
        meta = {"options": category_5_options(item_id, adversarial)} if cat == 5 else {}
        items.append(Item(item_id, question_prompt(qa["question"], cat, item_id, adversarial), [gold], cat,
                          query=qa["question"], meta=meta))
    return items


def load_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Every conversation of a LoCoMo file with its QA items; errors name the file and the first bad field."""
    from ..data.locomo import load_locomo, locomo_messages

    path = os.fspath(path)
    out = []
    for i, s in enumerate(load_locomo(path)):
        try:
            history = locomo_messages(s, f"{path}: sample [{i}]")
        except KeyError as e:
            raise ValueError(f"{path}: sample [{i}] lacks field {e}") from None
        out.append(Conversation(str(s["sample_id"]), history, _qa_items(s, path, i)))
    return out


def training_conversations(recipes: str | os.PathLike | None = None) -> set[str]:
    """LoCoMo conversation ids that any training recipe (configs/train/*.yaml) trains on: its QA
    episodes (`locomo_conversations`) or its plain text (`preserve_conversations`)."""
    import yaml

    folder = Path(recipes) if recipes else Path(__file__).resolve().parents[2] / "configs" / "train"
    used: set[str] = set()
    for f in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        cfg = yaml.safe_load(f.read_text()) or {}
        for key in ("locomo_conversations", "preserve_conversations"):
            used.update(str(c) for c in cfg.get(key) or [])
    return used
