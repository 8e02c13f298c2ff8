"""Generated multi-session chats between two people, as varied as real ones (docs/design.md section 5).

Every surface feature a user's chat varies is drawn at random: names and places from Faker in many
locales, jobs and companies, relatives and pets, who states a fact and how ("Fun fact: ...", "my
sister Ana ..."), an acknowledgement or none, several facts a session, updates that overwrite an old
value, LoCoMo-style session dates, and small talk taken from real conversations (LoCoMo turns) or a
built-in pool. Each chat comes as a LoCoMo sample (`conversation`, `qa`), so it is written and asked
exactly as `deltamem eval locomo` writes and asks a conversation. Questions come in many phrasings.

Nothing here is taken from the dev memory probe (`../shared/data/probe/`): no question template,
statement frame or opener, and no value of a pool is one of the probe's (tests/train/test_chats.py checks
this whenever the probe sits beside the checkout), so that the probe measures transfer to a surface the
training never saw.
"""

from __future__ import annotations

import random
from functools import lru_cache

LOCALES = ["en_US", "en_GB", "en_IN", "en_AU", "en_IE", "de_DE", "fr_FR", "es_ES", "es_MX", "it_IT", "pt_BR",
           "pt_PT", "nl_NL", "pl_PL", "sv_SE", "tr_TR", "cs_CZ", "fi_FI", "da_DK", "ro_RO", "hu_HU", "id_ID"]

RELATIVES = ["sister", "brother", "son", "cousin", "niece", "nephew", "partner", "grandmother", "grandfather",
             "aunt", "uncle", "flatmate", "boss", "neighbour", "wife", "husband", "godson", "stepdad"]
PETS = ["dog", "cat", "parrot", "rabbit", "hamster", "tortoise", "horse", "goldfish", "puppy", "kitten"]
POOLS = {
    "hobby": ["pottery", "rock climbing", "birdwatching", "knitting", "chess", "salsa dancing", "woodworking",
              "archery", "calligraphy", "sailing", "beekeeping", "origami", "fencing", "kayaking", "baking bread",
              "stargazing", "gardening", "photography", "juggling", "scuba diving"],
    "food": ["lasagna", "pho", "tacos al pastor", "dumplings", "shakshuka", "paella", "ramen", "jollof rice",
             "moussaka", "pierogi", "butter chicken", "ceviche", "falafel", "risotto", "goulash", "sushi"],
    "instrument": ["cello", "banjo", "saxophone", "harmonica", "ukulele", "violin", "drums", "trumpet", "harp",
                   "accordion", "flute", "piano", "bass guitar", "oboe"],
    "sport": ["badminton", "water polo", "squash", "netball", "curling", "handball", "volleyball", "rugby",
              "table tennis", "ice hockey", "lacrosse", "cricket"],
    "drink": ["green tea", "espresso", "chai", "lemonade", "hot chocolate", "kombucha", "mint tea", "oat latte"],
    "language": ["Portuguese", "Japanese", "Swahili", "Korean", "Italian", "Polish", "Arabic", "Dutch", "Greek"],
}

# statement frames: "{v}" the value; "{r}" a relative/pet noun; None where the fact type has no noun
FACT_TYPES = {
    "relative": (["My {r} is {v}.", "my {r} {v} is visiting next week.", "I had lunch with my {r} {v} today.",
                  "{v}, my {r}, just got a new job.", "my {r}'s name is {v}, did I ever tell you?",
                  "I'm helping my {r} {v} move house this weekend."],
                 ["What is the name of {n}'s {r}?", "Who is {n}'s {r}?", "What's {n}'s {r} called?",
                  "What's the name of {n}'s {r}?"]),
    "pet": (["we adopted a {r} and named it {v}.", "my {r} {v} chewed my shoes again.", "our {r} is called {v}.",
             "I got a {r}! Its name is {v}."],
            ["What is the name of {n}'s {r}?", "What did {n} name the {r}?", "What is {n}'s {r} called?"]),
    "job": (["I work as a {v} now.", "I started a new job as a {v}.", "I've been a {v} for six years.",
             "my job? I'm a {v}."],
            ["What does {n} do for work?", "What is {n}'s job?", "What is {n}'s profession?",
             "What does {n} work as?"]),
    "city": (["I live in {v} these days.", "we just moved to {v}.", "I grew up in {v}.", "home is {v} for me now."],
             ["Where does {n} live?", "Which city does {n} live in?", "Where is {n} based?"]),
    "company": (["I work at {v}.", "I just joined {v}.", "my employer is {v}."],
                ["Where does {n} work?", "Which company does {n} work for?", "Who is {n}'s employer?"]),
    "street": (["we live on {v} now.", "our new place is on {v}.", "I just moved to a house on {v}."],
               ["Which street does {n} live on?", "What street is {n}'s home on?"]),
    "holiday": (["we're flying to {v} for our holiday.", "I'm spending the summer in {v}.",
                 "I booked two weeks in {v}."],
                ["Where is {n} going on holiday?", "Which country is {n} travelling to?"]),
    "author": (["my favourite writer is {v}.", "I've read every book by {v}."],
               ["Who is {n}'s favourite author?", "Which writer does {n} read?"]),
    "doctor": (["my dentist is Dr {v}.", "I finally found a good dentist, Dr {v}."],
               ["What is the name of {n}'s dentist?", "Who is {n}'s dentist?"]),
    "colour": (["my favourite colour is {v}.", "I painted my room {v}, my favourite colour."],
               ["What is {n}'s favourite colour?", "Which colour does {n} like most?"]),
    "month": (["my birthday is in {v}.", "I was born in {v}."],
              ["When is {n}'s birthday?", "In which month was {n} born?"]),
    "hobby": (["I've taken up {v}.", "I spend my weekends on {v}.", "lately I'm really into {v}."],
              ["What hobby did {n} take up?", "What is {n} into lately?", "What does {n} do at weekends?"]),
    "food": (["I could eat {v} every day.", "nothing beats {v} for me.", "{v} is what I cook when I'm happy."],
             ["What is {n}'s favourite food?", "Which dish does {n} love?", "What does {n} like to eat most?"]),
    "instrument": (["I'm learning the {v}.", "I play the {v} in a band.", "I bought a {v} last month."],
                   ["Which instrument does {n} play?", "What instrument is {n} learning?"]),
    "sport": (["I play {v} twice a week.", "I joined a {v} team.", "{v} is my sport."],
              ["Which sport does {n} play?", "What sport is {n} into?"]),
    "drink": (["my go-to drink is {v}.", "I start every day with {v}."],
              ["What is {n}'s favourite drink?", "What does {n} drink every morning?"]),
    "language": (["I'm learning {v}.", "I take {v} lessons on Tuesdays."],
                 ["Which language is {n} learning?", "What language does {n} study?"]),
}
# fact types whose values Faker makes: (in the chat's locale, else English; the Faker method)
FAKER_VALUES = {"city": (True, "city"), "company": (True, "company"), "street": (True, "street_name"),
                "author": (True, "name"), "doctor": (True, "last_name"), "holiday": (False, "country"),
                "colour": (False, "safe_color_name")}
OPENERS = ["", "", "", "Oh, ", "Guess what, ", "So, ", "Before I forget, ", "Fun fact: ", "Speaking of which, ",
           "Big news: ", "I meant to say, ", "Something new: ", "Oh right, "]
ACKS = ["That's great!", "Oh nice, good for you.", "Really? Tell me more.", "Ha, I didn't know that.",
        "Wow, that's lovely.", "Cool!", "No way!", "That sounds fun.", "Oh, interesting.", "Good to know."]
UPDATES = ["Actually, change of plans: ", "Update: ", "Quick correction, ", "Things changed: "]
SMALL_TALK = [
    "How was your weekend?", "Pretty quiet, I mostly stayed in.", "The weather has been so strange lately.",
    "I finally finished that book you recommended.", "Traffic was awful this morning.", "Any plans for the holidays?",
    "I need a proper holiday soon.", "Work has been hectic this week.", "Have you watched anything good recently?",
    "I tried a new recipe last night, it went okay.", "My phone screen cracked again.", "It's been ages!",
    "I'm so tired today.", "We should grab coffee sometime.", "I can't believe it's already this late in the year.",
    "The neighbours were loud again.", "I went for a long walk by the river.", "How's your family doing?",
    "Everyone is fine, thanks for asking.", "I've been sleeping badly lately.", "That reminds me of last summer.",
    "Did you see the match yesterday?", "I missed it, was it good?", "The new café downtown is nice.",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


@lru_cache(maxsize=None)
def _faker(locale: str):
    try:
        from faker import Faker
    except ImportError:
        raise ImportError("generated training chats need Faker: pip install 'deltamem[train]'") from None
    f = Faker(locale)
    f.seed_instance(0)
    return f


def _value(rng: random.Random, kind: str) -> tuple[str, str | None]:
    """`(value, noun)` of a fact type, from Faker (reseeded from `rng`) or the pools."""
    f = _faker(rng.choice(LOCALES))
    f.seed_instance(rng.randrange(2**31))
    if kind == "relative":
        return f.first_name(), rng.choice(RELATIVES)
    if kind == "pet":
        return f.first_name(), rng.choice(PETS)
    en = _faker("en_US")
    en.seed_instance(rng.randrange(2**31))
    if kind == "job":
        return en.job().split(",")[0].lower(), None
    if kind in FAKER_VALUES:
        local, method = FAKER_VALUES[kind]
        return getattr(f if local else en, method)(), None
    if kind == "month":
        return rng.choice(MONTHS), None
    return rng.choice(POOLS[kind]), None


def _date(rng: random.Random, day: int) -> str:
    hour, minute = rng.randint(1, 12), rng.choice(["00", "15", "30", "45"])
    return f"{hour}:{minute} {rng.choice(['am', 'pm'])} on {day % 28 + 1} {MONTHS[(day // 28) % 12]}, {2020 + day // 336}"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] if text else text


def generate_chat(rng: random.Random, facts: tuple[int, int], sessions: tuple[int, int], turns: tuple[int, int],
                  small_talk: list[str] | None = None) -> dict:
    """One chat as a LoCoMo sample: two speakers, dated sessions of small talk, facts said once by
    either speaker (an update may overwrite one later), and one question per fact (`qa`, category 4)."""
    names: list[str] = []  # a list, not a set: set order follows the per-process string hash salt
    while len(names) < 2:
        f = _faker(rng.choice(LOCALES))
        f.seed_instance(rng.randrange(2**31))
        name = f.first_name()
        names += [name] if name not in names else []
    a, b = names
    talk = small_talk or SMALL_TALK
    n_sessions = rng.randint(*sessions)
    day = rng.randrange(3000)
    conv: dict = {"speaker_a": a, "speaker_b": b}
    script: list[list[tuple[str, str]]] = []
    for _ in range(n_sessions):
        script.append([(rng.choice((a, b)), rng.choice(talk)) for _ in range(rng.randint(*turns))])
    qa, seen = [], set()
    for _ in range(rng.randint(*facts)):
        kind = rng.choice(sorted(FACT_TYPES))
        who = rng.choice((a, b))
        if (who, kind) in seen:
            continue
        seen.add((who, kind))
        value, noun = _value(rng, kind)
        frames, questions = FACT_TYPES[kind]
        s = rng.randrange(n_sessions)
        turn = [(who, _sentence(rng.choice(OPENERS) + rng.choice(frames).format(v=value, r=noun)))]
        if rng.random() < 0.6:
            turn.append(({a: b, b: a}[who], rng.choice(ACKS)))
        at = rng.randint(0, len(script[s]))
        script[s][at:at] = turn
        if rng.random() < 0.15 and s + 1 < n_sessions:  # a later session overwrites the value
            new, _ = _value(rng, kind) if kind not in ("relative", "pet") else (_value(rng, kind)[0], noun)
            if new != value:
                value = new
                later = rng.randrange(s + 1, n_sessions)
                text = rng.choice(UPDATES) + rng.choice(frames).format(v=value, r=noun)
                script[later].insert(rng.randint(0, len(script[later])), (who, _sentence(text)))
        qa.append({"question": rng.choice(questions).format(n=who, r=noun), "answer": value, "category": 4})
    for i, turns_i in enumerate(script, 1):
        day += rng.randint(1, 20)
        conv[f"session_{i}_date_time"] = _date(rng, day)
        conv[f"session_{i}"] = [{"speaker": sp, "dia_id": f"D{i}:{j}", "text": t} for j, (sp, t) in enumerate(turns_i, 1)]
    return {"sample_id": f"chat-{rng.randrange(10**9)}", "conversation": conv, "qa": qa}
