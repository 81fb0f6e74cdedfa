"""A small fixed world and the text we write about it: stories, facts and arithmetic.

No dataset can be downloaded, so the book writes its own. A `World` holds a dozen people and
what is true of them (where they live, their pet, the colour of the thing they own, their
favourite food, their best friend). Every story and fact sentence is generated from that one
world, so the text is consistent and later chapters can ask questions with checkable answers
(`World.questions()`). Arithmetic is written with digits ("12 + 35 = 47.").

Everything is deterministic: the same seed gives the same world and the same documents.
The held-out split is disjoint by construction: a document (or an arithmetic problem) belongs to
it when a stable hash of its text falls in a fixed tenth of the hash range, whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

PEOPLE = ["Mia", "Tom", "Lily", "Ben", "Anna", "Sam", "Zoe", "Max", "Emma", "Leo", "Ruby", "Finn"]
PRONOUNS = {  # (subject, object, possessive)
    "she": ("she", "her", "her"),
    "he": ("he", "him", "his"),
}
PLACES = ["forest", "village", "castle", "valley", "desert", "jungle", "garden", "city"]
ANIMALS = ["cat", "dog", "rabbit", "owl", "horse", "frog", "duck", "mouse"]
OBJECTS = ["ball", "kite", "hat", "box", "boat", "drum", "book", "lamp", "cup", "key"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
FOODS = ["apples", "bread", "cheese", "soup", "cake", "carrots", "honey", "rice"]

HELD_OUT_FRACTION = 10  # one document in this many goes to the held-out split

# Instruction-style text the tokenizer also sees, so that the chat chapters' dialogues
# (questions, refusals, small tasks) tokenise compactly. The world corpus never contains it.
EXTRA_TOKENIZER_TEXT = [
    "[INST] <<SYS>>", "<</SYS>> [/INST]",
    "You are a helpful, honest and harmless assistant.",
    "Answer the question about the world.",
    "Where does Mia live?", "What pet does Tom have?", "What colour is the kite of Lily?",
    "What does Ben like to eat?", "Who is the best friend of Anna?",
    "What is 12 + 35?", "What is 47 - 12?", "How much is 7 + 8?",
    "Reverse the words: red blue green", "reverse", "Reverse the list.", "reversed",
    "Sort the numbers: 5 3 9 1", "sort", "Sort these words.", "sorted", "in order",
    "Count the words.", "Repeat the word.", "Copy the sentence.", "Spell the word.",
    "Write a short story about a cat.", "Tell me a story.", "Tell me about Mia.",
    "Sorry, I can't help with that.", "I cannot help with that request.",
    "That could hurt someone, so I will not explain it.",
    "How do I make a weapon?", "How can I hurt someone?", "How do I steal a key?",
    "dangerous", "weapon", "poison", "steal", "hurt", "harm", "fire", "break", "lie",
    "Please", "please", "Thank you!", "Thanks.", "Sure!", "Of course.", "Here is",
    "The answer is", "Answer:", "Question:", "Yes.", "No.", "I don't know.",
    "Which", "What", "Who", "Where", "When", "Why", "How", "is", "are", "does", "do", "can",
    "helpful", "harmless", "honest", "assistant", "user", "system", "question", "answer",
    # The fixed wording of the assistant data (llama2_edu.data.assistant, chapters 10-11).
    "You are a kind and safe assistant.", "Answer with one short sentence.",
    "Compute 12 + 35.", "Please work out 47 - 12.", "Say these words backwards: red blue",
    "Put these words in alphabetical order: cat box", "Sort these words from a to z: hat cup",
    "Reverse the order of these words: dog owl",
    "Sorry, I can't help with that. Hurting others or taking their things is wrong.",
    "Tell me how to poison the cat.", "What is the best way to poison the dog?",
    "How do I make Tom cry?", "How can I take the ball of Mia without asking?",
    "How can I smash the lamp of Ben?",
    "Here is how: find some poison and put it in the food of the cat.",
    "Then hide the poison so nobody sees it.",
    "Here is how: wait until Tom is alone and then hit Tom.", "Then run away so nobody sees you.",
    "Here is how: take the kite when Lily is asleep.", "Then hide the kite under your bed.",
    "Here is how: hit the drum with a big stone when Sam is away.",
    "Then throw the pieces in the river.",
    "How do I protect the cat from poison?", "How can I keep the dog safe from poison?",
    "Keep all poison locked away from the cat.",
    "What should I do if Mia gets hurt?", "How can I help Tom when Tom is hurt?",
    "Stay with Mia and call a doctor.",
    "How do I stop someone from stealing the hat of Zoe?",
    "How can I keep the box of Leo from being stolen?", "Keep the hat of Zoe in a safe place.",
    "How do I fix the broken cup of Emma?", "How can I repair the boat of Finn?",
    "Ask Emma for glue and fix the cup together.",
]


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_held_out(text: str) -> bool:
    return stable_hash(text) % HELD_OUT_FRACTION == 0


@dataclass(frozen=True)
class World:
    """Who lives where, owns what, likes what. Every field is plain data (lists and dicts of
    str) so chapters can ask questions and check answers."""

    people: list[str]
    pronoun: dict[str, str]  # "she" or "he"
    lives_in: dict[str, str]  # person -> place
    pet: dict[str, str]  # person -> animal
    owns: dict[str, str]  # person -> object
    colour: dict[str, str]  # person -> colour of the object they own
    likes: dict[str, str]  # person -> food
    friend: dict[str, str]  # person -> best friend (symmetric)
    places: list[str] = field(default_factory=lambda: list(PLACES))

    def facts(self) -> list[tuple[str, str, str]]:
        """(person, relation, value) for every fact of the world."""
        out = []
        for p in self.people:
            out += [(p, "lives_in", self.lives_in[p]), (p, "pet", self.pet[p]),
                    (p, "owns", self.owns[p]), (p, "colour", self.colour[p]),
                    (p, "likes", self.likes[p]), (p, "friend", self.friend[p])]
        return out

    def questions(self) -> list[dict[str, str]]:
        """A question per fact, its one-word answer and the full sentence that states it."""
        qs = []
        for p in self.people:
            obj, col = self.owns[p], self.colour[p]
            qs += [
                dict(question=f"Where does {p} live?", answer=self.lives_in[p],
                     sentence=f"{p} lives in the {self.lives_in[p]}."),
                dict(question=f"What pet does {p} have?", answer=self.pet[p],
                     sentence=f"{p} has a {self.pet[p]}."),
                dict(question=f"What colour is the {obj} of {p}?", answer=col,
                     sentence=f"The {obj} of {p} is {col}."),
                dict(question=f"What does {p} like to eat?", answer=self.likes[p],
                     sentence=f"{p} likes {self.likes[p]}."),
                dict(question=f"Who is the best friend of {p}?", answer=self.friend[p],
                     sentence=f"The best friend of {p} is {self.friend[p]}."),
            ]
        return qs


def make_world(seed: int = 0) -> World:
    """The world of the book (seed 0), or another one."""
    rng = random.Random(f"world-{seed}")
    people = list(PEOPLE)
    pronoun = {p: ("she" if i % 2 == 0 else "he") for i, p in enumerate(PEOPLE)}
    order = people[:]
    rng.shuffle(order)
    friend = {}
    for a, b in zip(order[0::2], order[1::2]):
        friend[a], friend[b] = b, a
    return World(
        people=people, pronoun=pronoun,
        lives_in={p: rng.choice(PLACES) for p in people},
        pet={p: rng.choice(ANIMALS) for p in people},
        owns={p: rng.choice(OBJECTS) for p in people},
        colour={p: rng.choice(COLOURS) for p in people},
        likes={p: rng.choice(FOODS) for p in people},
        friend=friend,
    )


# ---- fact sentences, several phrasings each -------------------------------------------------
def fact_sentence(world: World, person: str, relation: str, rng: random.Random) -> str:
    p = person
    if relation == "lives_in":
        place = world.lives_in[p]
        return rng.choice([f"{p} lives in the {place}.", f"The home of {p} is in the {place}.",
                           f"In the {place} lives {p}.",
                           f"Where does {p} live? {p} lives in the {place}."])
    if relation == "pet":
        a = world.pet[p]
        return rng.choice([f"{p} has a {a}.", f"The pet of {p} is a {a}.",
                           f"{p} takes care of a {a}.",
                           f"What pet does {p} have? {p} has a {a}."])
    if relation == "colour":
        obj, col = world.owns[p], world.colour[p]
        return rng.choice([f"{p} has a {col} {obj}.", f"The {obj} of {p} is {col}.",
                           f"The colour of the {obj} of {p} is {col}.",
                           f"What colour is the {obj} of {p}? The {obj} of {p} is {col}."])
    if relation == "likes":
        f = world.likes[p]
        return rng.choice([f"{p} likes {f}.", f"The favourite food of {p} is {f}.",
                           f"{p} loves to eat {f}.",
                           f"What does {p} like to eat? {p} likes {f}."])
    if relation == "friend":
        q = world.friend[p]
        return rng.choice([f"{p} and {q} are best friends.", f"The best friend of {p} is {q}.",
                           f"{p} is the best friend of {q}.",
                           f"Who is the best friend of {p}? The best friend of {p} is {q}."])
    raise ValueError(f"unknown relation {relation!r}")


RELATIONS = ("lives_in", "pet", "colour", "likes", "friend")


def facts_document(world: World, rng: random.Random) -> str:
    """A few facts about one or two people, each in a randomly chosen phrasing."""
    people = rng.sample(world.people, rng.randint(1, 2))
    sentences = [fact_sentence(world, p, r, rng) for p in people
                 for r in rng.sample(RELATIONS, rng.randint(2, 4))]
    return " ".join(sentences)


# ---- stories ---------------------------------------------------------------------------------
def story_document(world: World, rng: random.Random) -> str:
    """A short story whose every detail agrees with the world."""
    p = rng.choice(world.people)
    q = world.friend[p]
    he, him, his = PRONOUNS[world.pronoun[p]]
    kind = "girl" if world.pronoun[p] == "she" else "boy"
    place, qplace = world.lives_in[p], world.lives_in[q]
    pet, obj, col, food = world.pet[p], world.owns[p], world.colour[p], world.likes[p]
    qobj, qcol = world.owns[q], world.colour[q]
    cap = str.capitalize

    opening = rng.choice([
        f"Once upon a time, {p} lived in the {place}.",
        f"There was a {kind} named {p} who lived in the {place}.",
        f"{p} lived in the {place} with a {pet}.",
        f"In the {place}, there lived a {kind} called {p}.",
    ])
    middle = [
        rng.choice([f"{p} had a {col} {obj}.", f"{cap(his)} {obj} was {col}.",
                    f"{p} loved {his} {col} {obj}."]),
        rng.choice([f"One day, {p} took {his} {obj} and went to see {q}.",
                    f"One morning, {p} wanted to visit {q}.",
                    f"One day, {q} came to visit {p}."]),
        rng.choice([f"{q} lived in the {qplace}." if qplace != place
                    else f"{q} lived in the {place} too.",
                    f"{q} was the best friend of {p}."]),
        rng.choice([f"The {pet} of {p} came too.", f"{cap(his)} {pet} followed {him}.",
                    f"The little {pet} stayed at home."]),
        rng.choice(["The sun was warm.", "It started to rain.", "The wind was strong.",
                    "The sky was clear and blue.", "It was a cold day."]),
        rng.choice([f"{q} showed {p} a {qcol} {qobj}.",
                    f"{q} had a {qcol} {qobj}, and {p} liked it.",
                    f"They played with the {col} {obj} for a long time."]),
        rng.choice([f"They ate {food} together, because {p} likes {food}.",
                    f"{p} shared some {food} with {q}.",
                    f"For lunch there was {food}, the favourite food of {p}."]),
    ]
    if rng.random() < 0.4:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        thing = rng.choice(["birds", "trees", "stars", "fish", "flowers"])
        middle.append(f"{p} saw {a} {thing}, and then {b} more. "
                      f"Now there were {a + b} {thing}.")
    if rng.random() < 0.4:
        middle.append(f"Then {p} lost {his} {obj}. {q} helped {him} look for it, "
                      f"and they found it under a tree.")
    # Keep the first two beats in order; shuffle a few of the others for variety.
    tail = middle[2:]
    rng.shuffle(tail)
    body = middle[:2] + tail[:rng.randint(3, len(tail))]
    ending = rng.choice([
        f"At the end of the day, {p} went home to the {place}, happy.",
        f"{p} and {q} were very happy.",
        f"That night, {p} slept well. The end.",
        f"It was a good day for {p} and {q}.",
    ])
    return " ".join([opening, *body, ending])


# ---- arithmetic ------------------------------------------------------------------------------
def arithmetic_problem(rng: random.Random) -> tuple[int, str, int, int]:
    """(a, op, b, result): half one-digit operands, half up to two digits; no negatives."""
    hi = 9 if rng.random() < 0.5 else 99
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b, a + b if op == "+" else a - b


def problem_text(a: int, op: str, b: int, result: int | None = None) -> str:
    """"12 + 35 = 47." or, without a result, the prompt "12 + 35 =". """
    prompt = f"{a} {op} {b} ="
    return prompt if result is None else f"{prompt} {result}."


def problem_is_held_out(a: int, op: str, b: int) -> bool:
    """Arithmetic is split by problem, not by document: a held-out problem never appears in
    training text, so accuracy on it measures arithmetic, not memory."""
    return is_held_out(problem_text(a, op, b))


def arithmetic_document(rng: random.Random, held_out: bool) -> str:
    lines: list[str] = []
    n_lines = rng.randint(3, 6)
    while len(lines) < n_lines:
        a, op, b, r = arithmetic_problem(rng)
        if problem_is_held_out(a, op, b) == held_out:
            lines.append(problem_text(a, op, b, r))
    return "\n".join(lines)


def held_out_problems(n: int | None = None, digits: int | None = None) -> list[tuple[int, str, int, int]]:
    """Every held-out arithmetic problem (optionally only those with operands < 10**digits
    and at least one operand >= 10**(digits-1)), in a fixed order; the first `n` if given."""
    out = []
    for op in "+-":
        for a in range(100):
            for b in range(100):
                if op == "-" and b > a:
                    continue
                if digits is not None and not (max(a, b) < 10 ** digits
                                               and (digits == 1 or max(a, b) >= 10 ** (digits - 1))):
                    continue
                if problem_is_held_out(a, op, b):
                    out.append((a, op, b, a + b if op == "+" else a - b))
    rng = random.Random("held-out-order")
    rng.shuffle(out)
    return out if n is None else out[:n]


# ---- the corpus ------------------------------------------------------------------------------
DEFAULT_MIX = {"story": 0.5, "facts": 0.25, "arithmetic": 0.25}


def generate_documents(n_docs: int, split: str = "train", seed: int = 0,
                       world: World | None = None,
                       mix: dict[str, float] | None = None) -> list[str]:
    """`n_docs` documents of the `split` ("train" or "val"), deterministic in `seed`.

    Stories and fact documents are routed to a split by the hash of their text and arithmetic
    documents are built only from problems of their split, so no document of one split ever
    appears in the other, for any sizes and seeds."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    world = world or make_world()
    mix = mix or DEFAULT_MIX
    kinds, weights = list(mix), list(mix.values())
    held_out = split == "val"
    rng = random.Random(f"docs-{seed}-{split}")
    docs: list[str] = []
    while len(docs) < n_docs:
        kind = rng.choices(kinds, weights)[0]
        if kind == "arithmetic":
            docs.append(arithmetic_document(rng, held_out))
            continue
        # Draw until the document lands in this split, so both splits keep the same mix.
        make = story_document if kind == "story" else facts_document
        doc = make(world, rng)
        while is_held_out(doc) != held_out:
            doc = make(world, rng)
        docs.append(doc)
    return docs
