"""Held-out figures for a trained adapter: the four answer CEs, greedy accuracy, perplexity ratio.

Every memory figure is shown against a mismatched-memory control (another
held-out episode's state), so a learned answer prior cannot pass as memory.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from ..adapter import MemoryState, use_memory
from ..runtime.generate import GenerationConfig, generate_tokens, stop_ids
from ..data.locomo import locomo_plain_texts
from .data import validation_set
from .episode import answer_ce, answer_ids, collate_reads, value_mask
from .sources import FACTS, synthetic_chats
from .trainer import Trainer, mean_ces


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def contains(prediction: str, answer: str) -> bool:
    return normalise(answer) in normalise(prediction)


@torch.no_grad()
def greedy_accuracy(tr: Trainer, episodes, batch: int = 8, max_new_tokens: int = 16, by=None) -> dict:
    """Memory-only greedy answers with the own memory, a mismatched memory and a zero state, and the
    frozen backbone (zero state) with the whole history in its prompt.

    `accuracy[name]`: the gold value appears in the reply; `first_token[name]`: the reply's first token
    is the gold answer's first token (the finer, greedy-relevant signal: is the value the argmax?).
    `by(episode) -> group` adds `by_group[group][name]`: hits and episodes per group."""
    pairs = [(ep, e) for ep in episodes for e in tr.encode([ep])]  # episodes whose encoding survived, in order
    eps, enc = [p[0] for p in pairs], [p[1] for p in pairs]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    stop = stop_ids(tr.model, tr.tok)
    hits = {"own": 0, "mismatched": 0, "zero": 0, "full_history": 0}
    first = dict.fromkeys(hits, 0)
    groups: dict[str, dict] = {}
    samples = []
    n = 0
    for i in tqdm(range(0, len(enc), batch), desc="greedy eval", leave=False):
        part, part_eps = enc[i:i + batch], eps[i:i + batch]
        if len(part) < 2:
            continue
        state, _ = tr.write(part)
        mis = state.rolled()
        zero = MemoryState.zeros(tr.model, len(part), tr.device)
        prompts = [e.read_ids[: e.answer_start] for e in part]
        full = [e.window_read_ids[: e.window_answer_start] for e in part]
        outs, gold = {}, [e.read_ids[e.answer_start] for e in part]
        for name, st, ps in (("own", state, prompts), ("mismatched", mis, prompts), ("zero", zero, prompts),
                             ("full_history", zero, full)):
            rows = [[] for _ in part]
            for step in generate_tokens(tr.model, ps, st, cfg, stop, tr.pad_id):
                for r, t in enumerate(step):
                    if t is not None:
                        rows[r].append(t)
            outs[name] = [tr.tok.decode(r, skip_special_tokens=True).strip() for r in rows]
            first[name] += sum(r[:1] == [g] for r, g in zip(rows, gold))
        for r, ep in enumerate(part_eps):
            group = groups.setdefault(by(ep) if by else None, {**dict.fromkeys(hits, 0), "episodes": 0})
            group["episodes"] += 1
            for name in hits:
                hit = contains(outs[name][r], ep.answer)
                hits[name] += hit
                group[name] += hit
            if len(samples) < 12:
                samples.append({"question": ep.question, "answer": ep.answer, **{k: v[r] for k, v in outs.items()}})
        n += len(part)
    acc = {k: v / max(n, 1) for k, v in hits.items()}
    acc["episodes"] = n
    acc["own/full_history"] = acc["own"] / max(acc["full_history"], 1e-9)
    out = {"accuracy": acc, "first_token": {k: v / max(n, 1) for k, v in first.items()}, "samples": samples}
    if by:
        out["by_group"] = dict(sorted(groups.items()))
    return out


def validation_greedy(tr: Trainer, n: int = 48) -> dict:
    """Greedy accuracy on the recipe's validation episodes (training distribution, a seed training never
    uses), grouped by what must travel (`answer_kind`): the figure to decide on, before any held-out one."""
    eps = validation_set(tr.cfg, n, words=tr.words, kin_words=tr.kin_words)
    return greedy_accuracy(tr, eps, by=lambda ep: answer_kind(ep, tr.words))


POOL_VALUES = {v for attr in FACTS.values() for pool in attr[:2] for v in pool}


def answer_kind(ep, words=()) -> str:
    """What must travel: a value from the small pools (a prior or a class code can carry it), a real word
    from the vocabulary list, a made-up or spliced word (only a copy can carry those), or the episode's kind
    otherwise."""
    if ep.kind not in ("synthetic", "update"):
        return ep.kind
    if ep.answer in POOL_VALUES:
        return "pool value"
    return "vocabulary word" if ep.answer.lower() in words else "made-up or spliced word"


def ce_by_answer(tr: Trainer, episodes, batch: int = 8, rows: list | None = None) -> dict:
    """Own and mismatched answer CE grouped by `answer_kind`: an own/mismatched gap carried by pool values
    alone means the memory passes a class code, not the specific word. `rows`: `tr.validate_rows(episodes)`
    when already computed."""
    groups: dict[str, list] = {}
    for ep, ces in tr.validate_rows(episodes, batch) if rows is None else rows:
        groups.setdefault(answer_kind(ep, tr.words), []).append(ces)
    return {k: {key: v for key, v in mean_ces(g).items() if key in ("own", "mismatched", "own/mismatched", "episodes")}
            for k, g in sorted(groups.items())}


@torch.no_grad()
def choice_accuracy(tr: Trainer, episodes, candidates, batch: int = 8) -> dict:
    """Which candidate answer does a memory make most likely (lowest answer CE under the episode's
    question)? `candidates(part, j)` -> `(answers, gold index)` for episode j of a written batch `part`
    of `(episode, encoded)` pairs. Accuracy with the own memory, another episode's (`mismatched`), a
    zero state, and chance."""
    pairs = [(ep, e) for ep in episodes for e in tr.encode([ep])]
    hits = {"own": 0, "mismatched": 0, "zero": 0}
    chance, n = 0.0, 0
    for i in range(0, len(pairs) - 1, batch):
        part = pairs[i:i + batch]
        if len(part) < 2:
            break
        state, _ = tr.write([e for _, e in part])
        states = {"own": state, "mismatched": state.rolled(),
                  "zero": MemoryState.zeros(tr.model, len(part), tr.device)}
        for j, (_, e) in enumerate(part):
            cands, gold = candidates(part, j)
            prompt = e.read_ids[:e.answer_start]
            reads = collate_reads([(prompt + answer_ids(tr.renderer, c, tr.cfg.answer_space) + [tr.end_id], len(prompt))
                                   for c in cands], tr.pad_id)
            for name, st in states.items():
                hits[name] += int(answer_ce(tr.model, reads, st.rows([j] * len(cands))).argmin()) == gold
            chance += 1 / len(cands)
            n += 1
    out = {k: v / max(n, 1) for k, v in hits.items()}
    out.update(chance=chance / max(n, 1), episodes=n)
    return out


def candidate_choice(tr: Trainer, episodes, split: str, batch: int = 8) -> dict:
    """Which of its attribute's candidate values does a memory make most likely (`choice_accuracy`)?

    Candidates are the attribute's values in `split` (held-out: the 5-6 unseen ones; train: the pool).
    Unlike greedy decoding this asks only whether the specific fact moved the answer towards itself."""
    col = 1 if split == "heldout" else 0
    eligible = [ep for ep in episodes if ep.kind in ("synthetic", "update")
                and ep.answer in FACTS[ep.meta["attribute"]][col]]

    def candidates(part, j):
        ep = part[j][0]
        cands = FACTS[ep.meta["attribute"]][col]
        return cands, cands.index(ep.answer)

    return choice_accuracy(tr, eligible, candidates, batch)


def made_up_choice(tr: Trainer, n: int = 48, seed: int = 4343, batch: int = 8) -> dict:
    """Chats stating ONE made-up value and nothing else; in each batch of `batch` chats, which of the
    batch's made-up answers does a memory make most likely (`choice_accuracy`, episode j's question)?
    Only a copied word can pick its own chat's answer; chance is 1 / batch."""
    eps = synthetic_chats(n, seed, "train", (1, 1), (0, 0), novel=1.0)
    return choice_accuracy(tr, eps, lambda part, j: ([ep.answer for ep, _ in part], j), batch)


def made_up_probe(tr: Trainer, fillers=(0, 1, 3, 6), n: int = 24, seed: int = 4242) -> dict:
    """Own / mismatched answer CE on chats stating ONE made-up value among `k` filler turn pairs, for
    each `k`: only a copied word can lower the own memory's CE here (no pool, no second fact)."""
    out = {}
    for k in fillers:
        r = tr.validate(synthetic_chats(n, seed + k, "train", (1, 1), (k, k), novel=1.0))
        out[str(k)] = {"own": r["own"], "mismatched": r["mismatched"], "own/mismatched": r["own/mismatched"]}
    return out


@torch.no_grad()
def gate_profile(tr: Trainer, episodes) -> dict:
    """Mean write gate on the tokens of the answer's value where the history states it, against every
    other written token: a memory keeps a fact only if its gates pick the fact out (a value written no
    harder than filler is soon overwritten)."""
    layers = list(tr.dm.layers.values())
    captured: list[torch.Tensor] = []

    def spy(layer):
        orig = layer.project_packed

        def project_packed(h):
            out = orig(h)
            captured.append(out[2].mean((-1, -2))[0])  # beta [1, T, H, r] -> [T]
            return out
        return project_packed

    sums = {"value": [0.0, 0], "other": [0.0, 0]}
    for ep in episodes:
        enc = tr.encode([ep])
        ids = tr.tok(" " + ep.answer, add_special_tokens=False)["input_ids"]
        if not enc or not ids:
            continue
        value = value_mask(enc[0].write.input_ids[0].tolist(), ids)
        if not value.any():
            continue
        captured.clear()
        for layer in layers:
            layer.project_packed = spy(layer)
        try:
            tr.write(enc)
        finally:
            for layer in layers:
                del layer.project_packed  # back to the class method
        gate = torch.stack(captured).mean(0).cpu()  # [T], mean over layers
        written = enc[0].write.write_mask[0].cpu()
        for name, sel in (("value", value & written), ("other", ~value & written)):
            sums[name][0] += float(gate[sel].sum())
            sums[name][1] += int(sel.sum())
    out = {k: v / max(c, 1) for k, (v, c) in sums.items()}
    out["value/other"] = out["value"] / max(out["other"], 1e-9)
    out["episodes"] = len(episodes)
    return out


@torch.no_grad()
def perplexity_ratio(tr: Trainer, texts: list[str], memory_text: list[str], max_tokens: int = 512) -> dict:
    """Perplexity of plain `texts` under the frozen backbone vs with the adapter and a memory written
    from unrelated `memory_text` (read-only while scoring)."""
    state = MemoryState.zeros(tr.model, 1, tr.device)
    mem_ids = tr.tok("\n".join(memory_text), add_special_tokens=False)["input_ids"][:max_tokens]
    with use_memory(tr.model, state, write=True):
        tr.model.get_decoder()(input_ids=torch.tensor([mem_ids], device=tr.device), use_cache=False)
    nll = {"backbone": 0.0, "delta_mem": 0.0}
    count = 0
    for text in texts:
        ids = torch.tensor([tr.tok(text, add_special_tokens=False)["input_ids"][:max_tokens]], device=tr.device)
        if ids.shape[1] < 2:
            continue
        base = tr.model(input_ids=ids, labels=ids).loss
        with use_memory(tr.model, state, write=False):
            mem = tr.model(input_ids=ids, labels=ids).loss
        k = ids.shape[1] - 1
        nll["backbone"] += float(base) * k
        nll["delta_mem"] += float(mem) * k
        count += k
    ppl = {k: math.exp(v / max(count, 1)) for k, v in nll.items()}
    ppl["ratio"] = ppl["delta_mem"] / ppl["backbone"]
    ppl["tokens"] = count
    return ppl


def heldout_report(tr: Trainer, n: int = 48, plain_texts: list[str] | None = None,
                   memory_text: list[str] | None = None) -> dict:
    """All held-out figures: CEs and greedy accuracy on unseen templates/values (split "heldout") and on
    the training distribution under an unseen seed, plus the perplexity ratio when texts are given."""
    cfg = tr.cfg
    report = {}
    for split in ("heldout", "train"):
        eps = validation_set(cfg, n, split="heldout", words=tr.words, kin_words=tr.kin_words) if split == "heldout" \
            else _unseen_seed(cfg, n, tr.words, tr.kin_words)
        rows = tr.validate_rows(eps)
        report[split] = {"ce": mean_ces([c for _, c in rows]), "ce_by_answer": ce_by_answer(tr, eps, rows=rows),
                         "candidates": candidate_choice(tr, eps, split), "gates": gate_profile(tr, eps),
                         **greedy_accuracy(tr, eps)}
        if split == "heldout":
            swapped = training_templates(eps)
            rows = tr.validate_rows(swapped)
            report["heldout_values_training_templates"] = {"ce": mean_ces([c for _, c in rows]),
                                                           **greedy_accuracy(tr, swapped)}
    report["heldout_one_fact"] = one_fact_greedy(tr, n)
    report["made_up_probe"] = made_up_probe(tr)
    report["made_up_choice"] = made_up_choice(tr)
    if plain_texts and memory_text:
        report["perplexity"] = perplexity_ratio(tr, plain_texts, memory_text)
    return report


def one_fact_greedy(tr: Trainer, n: int = 48) -> dict:
    """Greedy answers on held-out chats that state ONE fact and nothing else (unseen templates and values):
    exact recall where nothing competes in the state, which the filler sets hide when it is rare."""
    cfg = replace(tr.cfg, sources={"synthetic": 1.0}, facts_per_episode=[1, 1], filler_turns=[0, 0])
    return greedy_accuracy(tr, validation_set(cfg, n, split="heldout", words=tr.words, kin_words=tr.kin_words))


def training_templates(episodes, seed: int = 0) -> list:
    """Held-out episodes restated with the training templates: each statement of a value becomes a training
    statement of the same value ("Update: " kept), and the question a training question. With unseen values
    and seen phrasings, this splits a held-out miss into "the phrasing" vs "the value"."""
    rng = random.Random(seed)
    out = []
    for ep in episodes:
        if ep.kind not in ("synthetic", "update") or "attribute" not in ep.meta:
            out.append(ep)
            continue
        facts = ep.meta.get("facts")  # synthetic: attribute -> value; update: old and new of one attribute
        attr = {v: a for a, v in facts.items()} if facts else {v: ep.meta["attribute"] for v in ep.values}
        history = []
        for m in ep.history:
            hit = [v for v in attr if m["role"] == "user" and v in m["content"]]
            if hit:
                prefix = "Update: " if m["content"].startswith("Update: ") else ""
                m = {**m, "content": prefix + rng.choice(FACTS[attr[hit[0]]][2]).format(v=hit[0])}
            history.append(m)
        name = next((m["name"] for m in ep.history if m.get("name")), "")
        question = rng.choice(FACTS[attr[ep.answer]][4]).format(n=name)
        out.append(replace(ep, history=history, question=question))
    return out


def _unseen_seed(cfg, n, words=(), kin_words=None):
    return validation_set(replace(cfg, seed=cfg.seed + 7919), n, split="train", words=words, kin_words=kin_words)


def main_report(adapter: str, recipe: str, n: int, locomo: str | None, out: str | None,
                overrides: dict | None = None, validation: bool = False) -> dict:
    from .config import TrainConfig

    # the recipe gives the episode sets; the adapter is evaluated under its own saved config. Nothing is
    # trained here, so the preservation term's set-up (backbone replies, long-memory snapshots) is skipped.
    cfg = TrainConfig.from_yaml(recipe, {**(overrides or {}), "init_adapter": adapter})
    cfg = replace(cfg, adapter={}, preserve=0.0)
    tr = Trainer(cfg, progress=False)
    if validation:
        return _dump({"validation": validation_greedy(tr, n)}, out)
    plain = mem = None
    if locomo:
        plain = locomo_plain_texts(locomo, ["conv-43", "conv-44"], turns=60)
        mem = locomo_plain_texts(locomo, ["conv-41"], turns=60)
    return _dump(heldout_report(tr, n, plain, mem), out)


def _dump(report: dict, out: str | None) -> dict:
    if out:  # written whole or not at all
        with open(out + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(out + ".tmp", out)
    return report
