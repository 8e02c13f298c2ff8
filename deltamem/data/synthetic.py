"""Seeded synthetic episodes: `(history messages, question, answer)` triples.

* `synthetic_chats`: a person states 1-3 facts (job, pet, city, ...) among filler turns; one
  question about one of them. Names, values and templates come in disjoint "train" and "heldout"
  splits, so an evaluation on "heldout" asks about values, statements and questions never trained on.
* `fact_updates`: a fact stated, later overwritten; the answer is the latest value.
"""

from __future__ import annotations

import random
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


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(['January', 'March', 'May', 'July', 'September', 'November'])} 2025"


def synthetic_chats(n: int, seed: int, split: str = "train", facts_per_episode: tuple[int, int] = (1, 3),
                    filler_turns: tuple[int, int] = (0, 6)) -> list[Episode]:
    """`n` chats, each stating 1-3 facts about one person among filler turn pairs; one question each.

    `split="train"` draws names, values and templates from the training pools,
    `"heldout"` from disjoint ones (unseen values, statements and questions).
    """
    h = _split(split)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = rng.choice(NAMES[split])
        kinds = rng.sample(sorted(FACTS), rng.randint(*facts_per_episode))
        chosen = {k: rng.choice(FACTS[k][h]) for k in kinds}
        turns = [[*_filler(rng, name, "")] for _ in range(rng.randint(*filler_turns))]
        for k in kinds:
            stmt = rng.choice(FACTS[k][2 + h]).format(v=chosen[k])
            turns.insert(rng.randint(0, len(turns)), [{"role": "user", "name": name, "content": stmt},
                                                      {"role": "assistant", "content": rng.choice(FACT_REPLIES)}])
        history, date = [], _date(rng)
        for pair in turns:
            for m in pair:
                if m["role"] == "user":
                    m["timestamp"] = date
            history += pair
        target = rng.choice(kinds)
        question = rng.choice(FACTS[target][4 + h]).format(n=name)
        out.append(Episode(history, question, chosen[target], "synthetic",
                           {"attribute": target, "facts": chosen, "values": list(chosen.values())}))
    return out


def fact_updates(n: int, seed: int, split: str = "train", filler_turns: tuple[int, int] = (0, 4)) -> list[Episode]:
    """A fact, filler, then the same fact with a new value; the answer is the latest value."""
    h = _split(split)
    rng = random.Random(seed + 1_000_003)
    out = []
    for _ in range(n):
        name = rng.choice(NAMES[split])
        k = rng.choice(sorted(FACTS))
        old, new = rng.sample(FACTS[k][h], 2)
        date = _date(rng)
        history = [{"role": "user", "name": name, "timestamp": date, "content": rng.choice(FACTS[k][2 + h]).format(v=old)},
                   {"role": "assistant", "content": rng.choice(FACT_REPLIES)}]
        for _ in range(rng.randint(*filler_turns)):
            history += _filler(rng, name, date)
        history += [{"role": "user", "name": name, "timestamp": date,
                     "content": "Update: " + rng.choice(FACTS[k][2 + h]).format(v=new)},
                    {"role": "assistant", "content": rng.choice(FACT_REPLIES)}]
        question = rng.choice(FACTS[k][4 + h]).format(n=name)
        out.append(Episode(history, question, new, "update", {"attribute": k, "old": old, "values": [old, new]}))
    return out


def _split(split: str) -> int:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return 0 if split == "train" else 1
