"""Offline episode sources: `(history messages, question, answer)` triples, each generator seeded.

* `synthetic_chats`: multi-session chats between named people, facts (jobs, pets,
  places, dates, preferences, events) among filler turns; questions about the facts.
  Statement/question templates and values come in disjoint "train" and "heldout" splits.
* `fact_updates`: a fact stated, later overwritten; the answer is the latest value.
* `novel` (both of the above, training split only): the share of values that are made-up
  words, which no prior can guess, so the memory must carry the value itself; `vocab`: the
  share drawn from `words`, a large list of real words (the backbone's vocabulary, held-out
  values removed), so that copying is learnt on values as varied as real ones; `blend`: the share
  of the rest that splice two such words ("harbor" + "lantern" -> "harbtern"), values of several
  tokens with real spelling, since held-out values are mostly 2-4 tokens and single-token words
  teach only one-token copies; `kin`: the share drawn first from `kin_words[attribute]`, real words
  of the attribute's own class ("dietitian" for a job), which the class's likeliest word does not
  answer, so only the value itself does;
* `generic` (training split only): the share of statements and questions taken from
  attribute-generic templates, so that one phrasing does not stand for one attribute;
  `varied`: the share of those drawn from a wider pool (more frames, synonyms for each
  attribute's noun), so that unseen phrasings are less far from every seen one.
* `key_value`: RULER-style key-value / needle recall in a noise haystack.
* `locomo_episodes`: LoCoMo QA pairs whose evidence lies inside the written history.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NAMES = {
    "train": ["Maya", "Liam", "Sofia", "Noah", "Aisha", "Lucas", "Elena", "Omar", "Chloe", "Mateo", "Hana", "Victor",
              "Priya", "Jonas", "Zara", "Felix", "Nora", "Diego", "Ines", "Tariq"],
    "heldout": ["Greta", "Kwame", "Lucia", "Ravi", "Yuki", "Anton", "Leila", "Bruno", "Freya", "Malik"],
}

# attribute: (train values, heldout values, train statements, heldout statements, train questions, heldout questions)
FACTS = {
    "pet": (["Biscuit", "Luna", "Rocky", "Pepper", "Milo", "Ziggy", "Coco", "Shadow", "Bella", "Oscar", "Nala", "Toby"],
            ["Pixel", "Waffles", "Juniper", "Mochi", "Comet", "Pickles"],
            ["I adopted a puppy last week and named him {v}.", "My cat is called {v}, she is very shy.",
             "We finally got a dog! His name is {v}."],
            ["Our new kitten is named {v}."],
            ["What is the name of {n}'s pet?", "What did {n} name the new pet?"],
            ["How is {n}'s pet called?"]),
    "job": (["nurse", "teacher", "plumber", "architect", "chef", "pilot", "lawyer", "dentist", "baker", "electrician"],
            ["librarian", "firefighter", "pharmacist", "carpenter", "journalist"],
            ["I started working as a {v} this month.", "My job? I am a {v}, and I love it.",
             "After years of training I finally became a {v}."],
            ["These days I earn my living as a {v}."],
            ["What does {n} do for a living?", "What is {n}'s job?"],
            ["Which profession does {n} have?"]),
    "city": (["Lisbon", "Oslo", "Denver", "Nairobi", "Seoul", "Dublin", "Lyon", "Perth", "Quito", "Krakow", "Austin"],
             ["Tromso", "Valencia", "Hanoi", "Tallinn", "Cusco", "Bergen"],
             ["I just moved to {v} for a fresh start.", "I live in {v} now, close to the old town.",
              "We bought a small flat in {v}."],
             ["Home for me is {v} these days."],
             ["Where does {n} live?", "Which city did {n} move to?"],
             ["In which city is {n}'s home?"]),
    "sport": (["tennis", "rugby", "volleyball", "cricket", "badminton", "hockey", "baseball", "golf", "squash"],
              ["fencing", "curling", "lacrosse", "handball", "polo"],
              ["Every Saturday I play {v} with friends.", "I joined a {v} club near my office.",
               "My favourite sport to play is {v}."],
              ["Lately I spend my weekends playing {v}."],
              ["Which sport does {n} play?", "What sport did {n} take up?"],
              ["What game does {n} play on weekends?"]),
    "instrument": (["guitar", "piano", "violin", "drums", "flute", "trumpet", "saxophone", "harp", "clarinet"],
                   ["cello", "banjo", "ukulele", "accordion", "oboe"],
                   ["I have been learning the {v} for two months.", "I bought a {v} and take lessons on Fridays.",
                    "My teacher says my {v} playing is getting better."],
                   ["Practising the {v} is my new evening habit."],
                   ["Which instrument is {n} learning?", "What instrument does {n} play?"],
                   ["What is {n} practising in the evenings?"]),
    "food": (["sushi", "lasagna", "tacos", "curry", "paella", "dumplings", "pancakes", "ramen", "falafel", "risotto"],
             ["goulash", "pierogi", "ceviche", "moussaka", "bibimbap"],
             ["My favourite dish is {v}, I could eat it every day.", "Nothing beats a plate of {v} after work.",
              "I cooked {v} for my family and it is now my favourite meal."],
             ["If I could choose one meal forever it would be {v}."],
             ["What is {n}'s favourite food?", "Which dish does {n} love most?"],
             ["What meal would {n} pick forever?"]),
    "color": (["green", "purple", "orange", "yellow", "blue", "red", "pink", "teal", "silver"],
              ["maroon", "turquoise", "lavender", "amber", "crimson"],
              ["My favourite colour is {v}.", "I painted my bedroom {v} because it is my favourite colour.",
               "I always pick {v} clothes, it is my colour."],
              ["The colour I like best is {v}."],
              ["What is {n}'s favourite colour?", "Which colour does {n} like best?"],
              ["What colour did {n} say is the best?"]),
    "month": (["January", "March", "April", "June", "July", "August", "October", "December"],
              ["February", "May", "September", "November"],
              ["My birthday is in {v}.", "I was born in {v}, so I celebrate then.",
               "Every {v} I throw a birthday party."],
              ["I turn a year older each {v}."],
              ["In which month is {n}'s birthday?", "When was {n} born?"],
              ["Which month does {n} celebrate a birthday in?"]),
    "sibling": (["Daniel", "Rosa", "Peter", "Amira", "Julia", "Marco", "Lena", "Samuel", "Clara", "Ivan"],
                ["Tobias", "Mirela", "Oskar", "Beatriz", "Kenji"],
                ["My brother {v} is visiting next week.", "My sister {v} just called me.",
                 "I had dinner with my sibling {v} yesterday."],
                ["My younger sibling, {v}, is staying with me."],
                ["What is the name of {n}'s sibling?", "Who is {n}'s brother or sister?"],
                ["Which sibling of {n} was mentioned?"]),
    "car": (["Toyota", "Volvo", "Honda", "Tesla", "Ford", "Fiat", "Skoda", "Mazda", "Kia"],
            ["Subaru", "Peugeot", "Renault", "Saab", "Lancia"],
            ["I bought a used {v} last month.", "My car is a {v}, it never breaks down.",
             "I finally replaced my old car with a {v}."],
            ["I drive a {v} to work every day."],
            ["What car does {n} drive?", "Which car brand did {n} buy?"],
            ["What make is {n}'s car?"]),
}

# attribute-generic phrasings (training split only; never equal to a held-out template)
NOUNS = {"pet": "pet's name", "job": "job", "city": "home city", "sport": "sport", "instrument": "instrument",
         "food": "favourite dish", "color": "favourite colour", "month": "birth month", "sibling": "sibling's name",
         "car": "car brand"}
GENERIC_STATEMENTS = ["By the way, my {noun} is {v}.", "Something about me: my {noun} is {v}.",
                      "Just so you know, my {noun} is {v}.", "Fun fact, my {noun}? It is {v}.",
                      "Oh, and my {noun} is {v}, in case you wondered.", "Quick note for you: {v} is my {noun}.",
                      "People are often surprised that my {noun} is {v}.", "For the record, {v} is my {noun}."]
GENERIC_QUESTIONS = ["What is {n}'s {noun}?", "Do you remember {n}'s {noun}?", "Tell me {n}'s {noun}.",
                     "What did {n} say their {noun} is?", "Which {noun} did {n} mention?",
                     "{n} mentioned their {noun}. What was it?"]

# the wider generic pool (`varied`): extra nouns per attribute and extra frames. No noun uses a word of
# the attribute's held-out templates that the training templates do not already use (a test checks).
SYNONYMS = {"pet": ["animal's name", "furry friend's name", "companion animal"],
            "job": ["occupation", "line of work", "career"],
            "city": ["town", "place of residence", "current town"],
            "sport": ["favourite sport", "sporting hobby", "club sport"],
            "instrument": ["musical instrument", "music hobby"],
            "food": ["favourite food", "best-loved dish", "comfort food"],
            "color": ["favourite shade", "preferred hue"],
            "month": ["month of birth", "birthday month"],
            "sibling": ["brother or sister", "sibling's first name"],
            "car": ["vehicle brand", "car manufacturer", "brand of car"]}
VARIED_STATEMENTS = ["My {noun} is {v}, if you are curious.", "{v}, that is my {noun}.",
                     "You asked about my {noun}: it is {v}.", "I should mention that my {noun} is {v}.",
                     "Let me tell you my {noun}: {v}.", "Not many people know my {noun} is {v}.",
                     "Here is something new: my {noun} is {v}.", "My {noun}, since you asked, is {v}."]
VARIED_QUESTIONS = ["Can you remind me of {n}'s {noun}?", "What was {n}'s {noun} again?",
                    "I forgot {n}'s {noun}. What is it?", "Any idea what {n}'s {noun} is?",
                    "Do you know {n}'s {noun}?", "Quick question: what is {n}'s {noun}?",
                    "Name {n}'s {noun}.", "From our chat, what is {n}'s {noun}?",
                    "Earlier {n} told you their {noun}. Which was it?"]

FILLER = [
    "The weather was {w} today, so I stayed in most of the afternoon.",
    "I watched a documentary about {t} last night, it was interesting.",
    "Traffic on the way home was {w2} again.",
    "I need to remember to buy {g} tomorrow.",
    "We talked about {t} at lunch for almost an hour.",
    "My phone battery keeps dying, I might get it checked.",
    "I read a few pages of a novel about {t} before bed.",
    "The meeting this morning ran long, nothing important though.",
    "I tried a new coffee place near the station, it was {w2}.",
    "Do you think it will rain this weekend?",
    "I cleaned the kitchen and did the laundry today.",
    "I am thinking about planning a short trip soon.",
]
FILL = {"w": ["grey", "sunny", "windy", "cold", "humid"], "w2": ["slow", "fine", "terrible", "okay", "busy"],
        "t": ["volcanoes", "ancient Rome", "deep sea fish", "space travel", "bees", "old trains"],
        "g": ["milk", "batteries", "bread", "light bulbs", "tea"]}
REPLIES = ["That sounds nice.", "I see, thanks for telling me.", "Good to know!", "Interesting, tell me more.",
           "Oh, I understand.", "That makes sense.", "Nice, I'll remember that.", "Sounds good."]
FACT_REPLIES = ["Great, thanks for sharing that!", "That is lovely to hear.", "Wonderful news!", "Noted, thanks."]


@dataclass
class Episode:
    history: list[dict]
    question: str
    answer: str
    kind: str = "synthetic"
    meta: dict = field(default_factory=dict)

    @property
    def values(self) -> list[str]:
        """Every value the history states (all facts, old and new), not only the one asked for:
        which of them a question will ask is unknown when the history is written."""
        return self.meta.get("values", [self.answer])


def _filler(rng: random.Random, name: str, date: str) -> list[dict]:
    text = rng.choice(FILLER)
    text = text.format(**{k: rng.choice(v) for k, v in FILL.items()})
    return [{"role": "user", "name": name, "timestamp": date, "content": text},
            {"role": "assistant", "content": rng.choice(REPLIES)}]


CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
CAPITALISED = {"pet", "city", "month", "sibling", "car"}


def pseudo_word(rng: random.Random, capital: bool = False) -> str:
    """A pronounceable made-up word of 2-3 syllables ("Kavelo"), never in any value pool."""
    w = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3)))
    return w.capitalize() if capital else w


# held-out values and names, lower-cased: no training value (vocabulary or spliced word) may be one of them
BANNED = {v.lower() for attr in FACTS.values() for v in attr[1]} | {n.lower() for n in NAMES["heldout"]}


def blend_word(rng: random.Random, words: Sequence[str]) -> str:
    """A prefix of one word spliced onto a suffix of another ("harbor", "lantern" -> "harbtern"):
    several tokens, real spelling, never a held-out value or name."""
    while True:
        a, b = rng.sample(words, 2)
        w = a[: rng.randint(2, max(2, len(a) - 1))] + b[rng.randint(1, max(1, len(b) - 2)):]
        if 4 <= len(w) <= 11 and w.lower() not in BANNED:
            return w


def _values(rng: random.Random, attr: str, h: int, novel: float, k: int = 1, vocab: float = 0.0,
            words: Sequence[str] = (), blend: float = 0.0, kin: float = 0.0,
            kin_words: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """`k` distinct values for `attr`: with probability `kin` words of its class from `kin_words`, else
    with probability `vocab` real words from `words`, else with probability `blend` spliced words, else with
    probability `novel` made up, else from the split's pool."""
    cap = attr in CAPITALISED
    if kin > 0 and rng.random() < kin:
        return rng.sample(kin_words[attr], k)
    if vocab > 0 and rng.random() < vocab:
        return [w.capitalize() if cap else w for w in rng.sample(words, k)]
    if blend > 0 and rng.random() < blend:
        return _distinct(k, lambda: (str.capitalize if cap else str)(blend_word(rng, words)))
    if novel > 0 and rng.random() < novel:
        return _distinct(k, lambda: pseudo_word(rng, cap))
    return rng.sample(FACTS[attr][h], k)


def _distinct(k: int, draw) -> list[str]:
    """`k` distinct results of `draw()`, drawn in order until there are enough."""
    out: list[str] = []
    while len(out) < k:
        w = draw()
        out += [w] if w not in out else []
    return out


def _phrase(rng: random.Random, attr: str, h: int, which: int, generic: float, varied: float = 0.0,
            **fields) -> str:
    """A statement (`which=2`) or question (`which=4`) about `attr`: the split's own templates, or with
    probability `generic` an attribute-generic one (training split only), of which a share `varied`
    comes from the wider pool (more frames and nouns)."""
    if generic > 0 and rng.random() < generic:
        if varied > 0 and rng.random() < varied:
            pool = GENERIC_STATEMENTS + VARIED_STATEMENTS if which == 2 else GENERIC_QUESTIONS + VARIED_QUESTIONS
            return rng.choice(pool).format(noun=rng.choice([NOUNS[attr], *SYNONYMS[attr]]), **fields)
        pool = GENERIC_STATEMENTS if which == 2 else GENERIC_QUESTIONS
        return rng.choice(pool).format(noun=NOUNS[attr], **fields)
    return rng.choice(FACTS[attr][which + h]).format(**fields)


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(['January', 'March', 'May', 'July', 'September', 'November'])} 2025"


def synthetic_chats(n: int, seed: int, split: str = "train", facts_per_episode: tuple[int, int] = (1, 3),
                    filler_turns: tuple[int, int] = (0, 6), novel: float = 0.0, vocab: float = 0.0,
                    words: Sequence[str] = (), generic: float = 0.0, varied: float = 0.0,
                    blend: float = 0.0, kin: float = 0.0,
                    kin_words: Mapping[str, Sequence[str]] | None = None) -> list[Episode]:
    """`n` chats, each stating 1-3 facts about one person among filler turn pairs; one question each.

    `split="train"` draws names, values and templates from the training pools,
    `"heldout"` from disjoint ones (unseen values, statements and questions).
    """
    _check_split(split, novel, vocab, words, generic, varied, blend, kin, kin_words)
    rng = random.Random(seed)
    h = 0 if split == "train" else 1
    out = []
    for _ in range(n):
        name = rng.choice(NAMES[split])
        kinds = rng.sample(sorted(FACTS), rng.randint(*facts_per_episode))
        chosen = {k: _values(rng, k, h, novel, 1, vocab, words, blend, kin, kin_words)[0]
                  if novel or vocab or blend or kin else rng.choice(FACTS[k][h])
                  for k in kinds}
        turns = [[*_filler(rng, name, "")] for _ in range(rng.randint(*filler_turns))]
        for k in kinds:
            stmt = _phrase(rng, k, h, 2, generic, varied, v=chosen[k])
            turns.insert(rng.randint(0, len(turns)), [{"role": "user", "name": name, "content": stmt},
                                                      {"role": "assistant", "content": rng.choice(FACT_REPLIES)}])
        history, date = [], _date(rng)
        for pair in turns:
            for m in pair:
                if m["role"] == "user":
                    m["timestamp"] = date
            history += pair
        target = rng.choice(kinds)
        question = _phrase(rng, target, h, 4, generic, varied, n=name)
        out.append(Episode(history, question, chosen[target], "synthetic",
                           {"attribute": target, "facts": chosen, "values": list(chosen.values())}))
    return out


def fact_updates(n: int, seed: int, split: str = "train", filler_turns: tuple[int, int] = (0, 4),
                 novel: float = 0.0, vocab: float = 0.0, words: Sequence[str] = (),
                 generic: float = 0.0, varied: float = 0.0, blend: float = 0.0, kin: float = 0.0,
                 kin_words: Mapping[str, Sequence[str]] | None = None) -> list[Episode]:
    """A fact, filler, then the same fact with a new value; the answer is the latest value."""
    _check_split(split, novel, vocab, words, generic, varied, blend, kin, kin_words)
    rng = random.Random(seed + 1_000_003)
    h = 0 if split == "train" else 1
    out = []
    for _ in range(n):
        name = rng.choice(NAMES[split])
        k = rng.choice(sorted(FACTS))
        old, new = _values(rng, k, h, novel, 2, vocab, words, blend, kin, kin_words)
        date = _date(rng)
        first = _phrase(rng, k, h, 2, generic, varied, v=old)
        history = [{"role": "user", "name": name, "timestamp": date, "content": first},
                   {"role": "assistant", "content": rng.choice(FACT_REPLIES)}]
        for _ in range(rng.randint(*filler_turns)):
            history += _filler(rng, name, date)
        history += [{"role": "user", "name": name, "timestamp": date,
                     "content": "Update: " + _phrase(rng, k, h, 2, generic, varied, v=new)},
                    {"role": "assistant", "content": rng.choice(FACT_REPLIES)}]
        question = _phrase(rng, k, h, 4, generic, varied, n=name)
        out.append(Episode(history, question, new, "update", {"attribute": k, "old": old, "values": [old, new]}))
    return out


def _check_split(split: str, novel: float, vocab: float = 0.0, words: Sequence[str] = (), generic: float = 0.0,
                 varied: float = 0.0, blend: float = 0.0, kin: float = 0.0,
                 kin_words: Mapping[str, Sequence[str]] | None = None) -> None:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    for name, share in (("novel", novel), ("vocab", vocab), ("generic", generic), ("varied", varied),
                        ("blend", blend), ("kin", kin)):
        if not 0.0 <= share <= 1.0 or (share and split != "train"):
            raise ValueError(f"{name} must be in [0, 1] and only used with split='train', got {share!r} for {split!r}")
    for name, share in (("vocab", vocab), ("blend", blend)):
        if share and len(words) < 3:
            raise ValueError(f"{name}={share} needs a list of at least 3 words, got {len(words)}")
    if kin and (short := sorted(a for a in FACTS if len((kin_words or {}).get(a, ())) < 2)):
        raise ValueError(f"kin={kin} needs at least 2 class words for every attribute; too few for {short}")


def key_value(n: int, seed: int, pairs: tuple[int, int] = (1, 4), noise_turns: tuple[int, int] = (0, 4)) -> list[Episode]:
    """RULER-style recall: `key -> number` pairs hidden among noise turns; ask for one key's number."""
    rng = random.Random(seed + 2_000_003)
    words = ["amber", "falcon", "harbor", "meadow", "quartz", "saffron", "tundra", "violet", "willow", "zephyr",
             "cobalt", "ember", "glacier", "lotus", "onyx", "prism"]
    out = []
    for _ in range(n):
        keys = rng.sample(words, rng.randint(*pairs))
        vals = {k: str(rng.randint(1000, 9999)) for k in keys}
        turns = [_filler(rng, "User", "") for _ in range(rng.randint(*noise_turns))]
        for k in keys:
            turns.insert(rng.randint(0, len(turns)), [
                {"role": "user", "content": f"Please remember: the special code for {k} is {vals[k]}."},
                {"role": "assistant", "content": "Got it, I will remember that code."}])
        history = [m for pair in turns for m in pair]
        for m in history:
            m.pop("name", None)
            m.pop("timestamp", None)
        k = rng.choice(keys)
        out.append(Episode(history, f"What is the special code for {k}?", vals[k], "key_value", {"key": k, "values": list(vals.values())}))
    return out


def locomo_episodes(samples: list[dict], conversations: list[str] | None = None, max_history: int = 40,
                    categories: tuple[int, ...] = (1, 2, 3, 4)) -> list[Episode]:
    """One episode per QA pair: the history is the conversation up to the last evidence turn
    (at most `max_history` messages, ending there), so the evidence lies inside what is written."""
    from ..data.locomo import locomo_messages

    out = []
    for s in samples:
        if conversations is not None and s.get("sample_id") not in conversations:
            continue
        msgs = locomo_messages(s)
        index = {m.get("dia_id"): i for i, m in enumerate(msgs)}
        for qa in s.get("qa", []):
            if qa.get("category") not in categories or "answer" not in qa:
                continue
            ev = [index[e] for e in qa.get("evidence", []) if e in index]
            if not ev:
                continue
            end = max(ev) + 1
            start = max(0, end - max_history)
            if min(ev) < start:
                continue
            hist = [{k: v for k, v in m.items() if k != "dia_id"} for m in msgs[start:end]]
            out.append(Episode(hist, qa["question"], str(qa["answer"]), "locomo",
                               {"sample_id": s.get("sample_id"), "category": qa["category"]}))
    return out
