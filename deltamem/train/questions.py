"""General questions for the preservation term: a memory of someone's chat should leave the answer to
"How many sides does a triangle have?" as the frozen backbone writes it.

`qa_chunks` renders each question as a chat exchange whose reply is the frozen backbone's own greedy
answer; `preserve_qa` rows read those with an episode's memory bound, and the KL pulls them back to the
backbone's. None of these questions (nor the "What is the capital of ..." frame) is in the QA set of
`deltamem eval general`, which measures the effect.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..runtime.generate import GenerationConfig, generate_tokens, stop_ids

QUESTIONS = [
    "How many sides does a triangle have?", "What is the largest planet in our solar system?",
    "How many minutes are in an hour?", "What colour do you get when you mix blue and yellow?",
    "Which animal is the largest mammal?", "What is the main language spoken in Brazil?",
    "How many continents are there?", "What is the freezing point of water in Fahrenheit?",
    "Who painted the Mona Lisa?", "What is 7 times 8?", "What is 15 plus 27?", "What is half of 50?",
    "Which organ pumps blood around the body?", "What do caterpillars turn into?",
    "What is the tallest mountain in the world?", "Which metal is liquid at room temperature?",
    "How many months have 31 days?", "What is the longest river in Africa?", "What do cows drink?",
    "What is the plural of mouse?", "What is the opposite of early?", "Give me a synonym for happy.",
    "Which season comes after winter?", "How many players are on a football team?",
    "What is the square root of 81?", "Which bird is a symbol of peace?", "What are clouds made of?",
    "Which instrument has 88 keys?", "What shape has four equal sides?", "What is H2O?",
    "Who was the first person to walk on the Moon?", "Which country is famous for the pyramids of Giza?",
    "What is the smallest prime number?", "How many bones are in the adult human body?",
    "What does a thermometer measure?", "Which vitamin do we get from sunlight?",
    "What is the hardest natural substance?", "Which ocean lies between Africa and Australia?",
    "What is the currency of the United States?", "How many strings does a standard guitar have?",
    "What is the past tense of run?", "Name a primary colour.", "What do pandas mostly eat?",
    "Which planet is known as the Red Planet?", "How many degrees are in a right angle?",
    "What language has the most native speakers?", "What is photosynthesis?",
    "Explain what a noun is in one sentence.", "Suggest a name for a pet goldfish.",
    "Write a one-line greeting for a birthday card.", "What should I pack for a rainy day?",
    "How do I boil an egg?", "Tell me a fun fact about octopuses.", "Why is the sea salty?",
    "What is the difference between weather and climate?", "How can I fall asleep faster?",
    "Translate 'thank you' into French.", "What rhymes with cat?", "Is a tomato a fruit or a vegetable?",
    "What year did the Second World War end?", "Which gas do humans breathe out?",
    "How many wheels does a bicycle have?",
    "What is the speed of light, roughly?", "Which month has the fewest days?",
    "Who wrote the theory of relativity?", "What is the main ingredient of guacamole?",
    "Which continent is Kenya in?", "What is a baby kangaroo called?", "How many zeros are in a million?",
    "Recommend a good habit for staying healthy.",
]
FORMATS = ["{q}", "Answer briefly: {q}", "Question: {q}\nAnswer:", "Please answer this question.\n\n{q}",
           "{q} Keep it short.", "Quick question: {q}"]


@torch.no_grad()
def qa_chunks(model, renderer, tokenizer, n_tokens: int, pad_id: int, batch: int = 16,
              progress: bool = False) -> list[list[int]]:
    """Chat exchanges `[system, user: a question in one of FORMATS, assistant: the frozen backbone's greedy
    reply]`, each `n_tokens` long: the question kept whole, the system prompt and the reply's end cut to fit
    (shorter exchanges dropped). Generated with no memory bound, so the reply is the backbone's."""
    sys_ids = list(renderer.system_ids)
    prompts = [renderer.prompt([], f.format(q=q)) for q in QUESTIONS for f in FORMATS]
    stop = stop_ids(model, tokenizer)
    cfg = GenerationConfig(max_new_tokens=n_tokens)
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc="backbone replies", disable=not progress, leave=False):
        part = prompts[i:i + batch]
        steps = list(generate_tokens(model, part, None, cfg, set(), pad_id))  # no stop: keep the stop token
        replies = [r[: next((j + 1 for j, t in enumerate(r) if t in stop), len(r))] for r in map(list, zip(*steps))]
        for p, reply in zip(part, replies):
            full = p + reply
            start = max(0, min(len(full) - n_tokens, len(sys_ids)))
            if len(full) - start >= n_tokens:
                out.append(full[start:start + n_tokens])
    return out
