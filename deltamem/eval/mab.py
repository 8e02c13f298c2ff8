"""MemoryAgentBench: conflict resolution from the released rows, and seeded synthetic competencies.

MemoryAgentBench (Hu et al., 2025) feeds a long context to an agent in chunks
("memorize" turns), then asks questions one by one. Here a chunk is one user
message; a question is asked after the last chunk, read-only.

* `load_conflict_resolution`: FactConsolidation rows (`context`, `questions`,
  `answers`, `metadata.source`). Rows sharing one context (the single-hop and
  multi-hop rows of one length) become one conversation, so it is processed once.
* `generate_synthetic`: the other competencies at sizes a small model can face,
  following their public recipes: accurate retrieval (RULER needle in a noise
  haystack: single, multi-key, multi-value; variable tracking), test-time
  learning (in-context classification with numeric label ids over a synthetic
  label set), long-range understanding (facts spread over the whole history,
  all needed for the answer). Seeded, and written to JSON by `write_synthetic`.
"""

from __future__ import annotations

import json
import os
import random
import re
import string

from .items import Conversation, Item

MEMORIZE = "Memorize the following text.\n\n"
CR_PROMPT = ("Answer from the facts you memorized, not from real-world knowledge. Each fact has a serial number; "
             "when facts conflict, the one with the larger serial number is newer and wins. Give a very short "
             "answer.\n\nQuestion: {}\nAnswer:")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."  # RULER noise
SYNTH_FORMAT = "deltamem.mab_synth"


def normalize(s: str) -> str:
    """MemoryAgentBench / SQuAD normalisation: lower-case, no punctuation or articles, single spaces."""
    s = "".join(ch for ch in str(s).lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def substring_score(prediction: str, answers: list[str], match: str = "any") -> float:
    """"any": 1 when one normalised gold answer occurs in the normalised prediction; "all": the fraction
    of gold answers that occur; "label": 1 when the first number in the prediction equals the gold label."""
    pred = normalize(prediction)
    if match == "label":
        m = re.search(r"\d+", prediction)
        return float(m is not None and m.group(0) in answers)
    hits = [bool(normalize(a)) and normalize(a) in pred for a in answers]
    if match == "all":
        return sum(hits) / len(hits)
    return float(any(hits))


def chunk_messages(text: str, chunk_chars: int = 1000) -> list[dict]:
    """Whole lines packed into user "memorize" messages of at most about `chunk_chars` characters."""
    chunks, cur = [], ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if cur and len(cur) + len(line) + 1 > chunk_chars:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n{line}" if cur else line
    if cur:
        chunks.append(cur)
    return [{"role": "user", "content": MEMORIZE + c} for c in chunks]


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_conflict_resolution(path: str | os.PathLike, chunk_chars: int = 1000) -> list[Conversation]:
    """FactConsolidation rows -> conversations (one per distinct context); errors name the file and field."""
    path = os.fspath(path)
    rows = _read_json(path)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty list of MemoryAgentBench rows")
    by_context: dict[str, Conversation] = {}
    for i, row in enumerate(rows):
        where = f"{path}: row [{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be an object")
        if not isinstance(row.get("context"), str) or not row["context"].strip():
            raise ValueError(f"{where} field 'context' must be a non-empty string")
        qs, ans = row.get("questions"), row.get("answers")
        if not isinstance(qs, list) or not all(isinstance(q, str) and q.strip() for q in qs):
            raise ValueError(f"{where} field 'questions' must be a list of non-empty strings")
        if not isinstance(ans, list) or len(ans) != len(qs):
            raise ValueError(f"{where} field 'answers' must be a list as long as 'questions'")
        for j, a in enumerate(ans):
            if not isinstance(a, list) or not a or not all(isinstance(x, (str, int, float)) for x in a):
                raise ValueError(f"{where} field 'answers[{j}]' must be a non-empty list of strings")
        source = (row.get("metadata") or {}).get("source") if isinstance(row.get("metadata"), dict) else None
        if not isinstance(source, str):
            raise ValueError(f"{where} field 'metadata.source' must be a string")
        conv = by_context.get(row["context"])
        if conv is None:
            cid = re.sub(r"_(sh|mh)(?=_|$)", "", source)
            if any(c.id == cid for c in by_context.values()):
                cid = f"{cid}-{i}"
            conv = by_context[row["context"]] = Conversation(cid, chunk_messages(row["context"], chunk_chars), [])
        cat = m.group(1) if (m := re.search(r"_(sh|mh)(?=_|$)", source)) else source
        conv.items += [Item(f"{source}:{j}", CR_PROMPT.format(q), [str(x) for x in a], cat, query=q, match="any")
                       for j, (q, a) in enumerate(zip(qs, ans))]
    return list(by_context.values())


# ---- synthetic competencies -------------------------------------------------------------------
TOPICS = {
    "sport": ["goal", "match", "coach", "stadium", "referee", "league", "striker", "penalty"],
    "food": ["recipe", "oven", "spice", "dessert", "noodles", "sauce", "bakery", "menu"],
    "weather": ["storm", "forecast", "rain", "thunder", "humidity", "breeze", "snowfall", "clouds"],
    "music": ["guitar", "melody", "concert", "chorus", "drummer", "album", "violin", "rhythm"],
    "tech": ["laptop", "software", "server", "keyboard", "database", "router", "compiler", "battery"],
    "travel": ["airport", "passport", "luggage", "hotel", "itinerary", "train", "border", "beach"],
}
NAMES = ["Maya", "Liam", "Sofia", "Noah", "Aisha", "Lucas", "Elena", "Omar", "Greta", "Kwame", "Yuki", "Ravi"]
CITIES = ["Lisbon", "Oslo", "Denver", "Nairobi", "Seoul", "Dublin", "Lyon", "Perth", "Quito", "Krakow", "Hanoi",
          "Tallinn", "Cusco", "Bergen", "Valencia", "Tromso"]
CHAT_NOISE = ["I spent the morning answering emails.", "The bus was late again today.",
              "I made a big pot of soup for the week.", "My neighbour's dog barked all night.",
              "I finished a puzzle with a thousand pieces.", "We talked about the weather for a while.",
              "I need to buy new running shoes.", "The library was closed for a holiday."]


def _haystack(rng: random.Random, lines: int, needles: list[str]) -> str:
    """`lines` lines of RULER noise with each needle inserted at a random depth."""
    body = [NOISE] * lines
    for n in needles:
        body.insert(rng.randint(0, len(body)), n)
    return "\n".join(body)


def _number(rng):
    return str(rng.randint(1_000_000, 9_999_999))


def _key(rng):
    return "-".join(rng.sample(["amber", "falcon", "harbor", "meadow", "quartz", "saffron", "tundra", "violet",
                                "willow", "zephyr", "cobalt", "ember", "glacier", "lotus", "onyx", "prism"], 2))


def _niah(rng, kind: str, lines: int) -> tuple[str, list[tuple[str, list[str], str]]]:
    needle = "One of the special magic numbers for {} is: {}."
    ask = "What is the special magic number for {} mentioned in the text you memorized? Answer with the number."
    if kind == "single":
        k, v = _key(rng), _number(rng)
        return _haystack(rng, lines, [needle.format(k, v)]), [(ask.format(k), [v], "any")]
    if kind == "multikey":
        keys = list(dict.fromkeys(_key(rng) for _ in range(8)))[:4]
        vals = [_number(rng) for _ in keys]
        asked = rng.sample(range(len(keys)), 2)
        return (_haystack(rng, lines, [needle.format(k, v) for k, v in zip(keys, vals)]),
                [(ask.format(keys[i]), [vals[i]], "any") for i in asked])
    k, vals = _key(rng), [_number(rng) for _ in range(3)]
    q = f"What are all the special magic numbers for {k} mentioned in the text you memorized? List them."
    return _haystack(rng, lines, [needle.format(k, v) for v in vals]), [(q, vals, "all")]


def _variable_tracking(rng, lines: int, hops: int = 4):
    names = list(dict.fromkeys("".join(rng.choices(string.ascii_uppercase, k=5)) for _ in range(2 * hops + 4)))
    value = str(rng.randint(10_000, 99_999))
    chain = names[:hops + 1]
    stmts = [f"VAR {chain[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(chain, chain[1:])]
    body = [NOISE] * lines
    pos = sorted(rng.sample(range(len(body) + 1), len(stmts)))
    for p, s in zip(reversed(pos), reversed(stmts)):  # keep the chain in order
        body.insert(p, s)
    q = f"Find all variables that are assigned the value {value} in the text you memorized. List their names."
    return "\n".join(body), [(q, chain, "all")]


def _icl(rng, examples: int, queries: int):
    topics = rng.sample(sorted(TOPICS), 4)
    ids = rng.sample(range(10), len(topics))  # numeric label ids, drawn per conversation

    def sentence(t):
        a, b = rng.sample(TOPICS[t], 2)
        return f"{rng.choice(NAMES)} mentioned the {a} and the {b} {rng.choice(['today', 'again', 'at lunch'])}."

    lines = []
    for _ in range(examples):
        t = rng.randrange(len(topics))
        lines.append(f"Text: {sentence(topics[t])} Label: {ids[t]}")
    qs = []
    for _ in range(queries):
        t = rng.randrange(len(topics))
        qs.append((f"Using the labelled examples you memorized, give the label of this text. Answer with the label "
                   f"number only.\nText: {sentence(topics[t])}\nLabel:", [str(ids[t])], "label"))
    return "\n".join(lines), qs


def _spread_facts(rng, lines: int, facts: int = 4):
    name = rng.choice(NAMES)
    cities = rng.sample(CITIES, facts)
    body = [rng.choice(CHAT_NOISE) for _ in range(lines)]
    step = len(body) // facts
    for i, c in enumerate(reversed(cities)):  # one fact in each part of the history
        p = (facts - 1 - i) * step + rng.randrange(max(step, 1))
        body.insert(p, f"{name}: I just got back from a trip to {c}.")
    q = f"Which cities did {name} say they had a trip to? List every one."
    return "\n".join(body), [(q, cities, "all")]


TASKS = {  # name: (competency, builder(rng, size) -> (context, [(question, answers, match)]))
    "niah-single": ("AR", lambda rng, n: _niah(rng, "single", n)),
    "niah-multikey": ("AR", lambda rng, n: _niah(rng, "multikey", n)),
    "niah-multivalue": ("AR", lambda rng, n: _niah(rng, "multivalue", n)),
    "variable-tracking": ("AR", lambda rng, n: _variable_tracking(rng, n)),
    "icl-classification": ("TTL", lambda rng, n: _icl(rng, max(8, n // 2), 4)),
    "spread-facts": ("LRU", lambda rng, n: _spread_facts(rng, n)),
}


def generate_synthetic(seed: int = 0, per_task: int = 2, lines: int = 80) -> dict:
    """The synthetic suite as a JSON-ready dict: `per_task` conversations per task, `lines` haystack lines
    (about 22 tokens each). The same arguments always give the same dict."""
    convs = []
    for t, (comp, build) in TASKS.items():
        for c in range(per_task):
            rng = random.Random(f"{seed}:{t}:{c}")
            context, qs = build(rng, lines)
            convs.append({"id": f"{t}-{c}", "category": f"{comp}/{t}", "context": context,
                          "questions": [{"question": q, "answers": a, "match": m} for q, a, m in qs]})
    return {"format": SYNTH_FORMAT, "seed": seed, "per_task": per_task, "lines": lines, "conversations": convs}


def write_synthetic(path: str | os.PathLike, **kw) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(generate_synthetic(**kw), f, indent=1)
    return path


def load_synthetic(path: str | os.PathLike, chunk_chars: int = 1000) -> list[Conversation]:
    """Conversations from a `write_synthetic` file; errors name the file and the first bad field."""
    path = os.fspath(path)
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != SYNTH_FORMAT:
        raise ValueError(f"{path}: field 'format' must be {SYNTH_FORMAT!r} (write one with mab-synth --data NEW.json)")
    convs = data.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise ValueError(f"{path}: field 'conversations' must be a non-empty list")
    out = []
    for i, c in enumerate(convs):
        where = f"{path}: conversations[{i}]"
        for key in ("id", "category", "context"):
            if not isinstance(c.get(key) if isinstance(c, dict) else None, str):
                raise ValueError(f"{where} field '{key}' must be a string")
        if not isinstance(c.get("questions"), list):
            raise ValueError(f"{where} field 'questions' must be a list")
        items = []
        for j, q in enumerate(c["questions"]):
            if not isinstance(q, dict) or not isinstance(q.get("question"), str) or \
                    not isinstance(q.get("answers"), list) or q.get("match") not in ("any", "all", "label"):
                raise ValueError(f"{where} field 'questions[{j}]' needs 'question', 'answers' (list), 'match'")
            items.append(Item(f"{c['id']}:{j}", q["question"], [str(a) for a in q["answers"]], c["category"],
                              match=q["match"]))
        out.append(Conversation(c["id"], chunk_messages(c["context"], chunk_chars), items))
    return out
