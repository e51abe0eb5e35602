"""What virtual participants write: participant-like sentences, 20 to 400 characters.

Deterministic per (participant, message) so a run can be repeated; the mix of short
answers and longer explanations follows what participants type in chat experiments.
"""

from __future__ import annotations

import random

SHORT = [
    "Ok, that makes sense.",
    "Can you say that again more simply?",
    "I'm not sure I agree with you.",
    "Why would that be the case?",
    "Hmm, I never thought about it that way.",
    "What is a fraction, exactly?",
    "Is 17 a prime number?",
    "Could you give me an example please?",
    "I think the answer is 42, right?",
    "That sounds a bit too good to be true.",
]
MEDIUM = [
    "I read somewhere that most people overestimate how much they remember from school. Is that true?",
    "So if I divide the numerator and the denominator by the same number, the fraction stays the same?",
    "My friend says vaccines cause more harm than good, but I am not convinced. What should I ask her?",
    "I tried to solve 3x + 5 = 20 and I got x = 5. Did I do it right or did I miss a step somewhere?",
    "Honestly I find it hard to concentrate on these questions after a long day at work, sorry.",
    "What would be a good way to check whether a claim in a newspaper article is actually supported?",
    "I guess I would say the second option, because it seems fairer to everyone involved in the game.",
    "Why do people keep saying that correlation is not causation? It seems obvious to me either way.",
]
LONG = [
    "Let me explain how I approached it. First I wrote down all the numbers between one and thirty, then I "
    "crossed out every second number after two, then every third after three, and so on. What was left "
    "should be the primes, but I ended up with 27 still on the list, so I must have made a mistake somewhere.",
    "I have been thinking about the question from before. On the one hand it seems reasonable to trust "
    "experts, because they spent years studying the topic. On the other hand experts have been wrong "
    "before, and sometimes they have reasons of their own. How do you decide when to trust them and when not?",
    "In the last round the other player kept everything for themselves, and I am tempted to do the same "
    "now. But I also think that if everybody behaves like that we all end up worse off. Do you think it is "
    "irrational to cooperate when you know the other person probably will not, or is there a good argument for it?",
    "My teacher always said that you cannot add fractions with different denominators, but my calculator "
    "does it without complaining. I suppose it converts them to a common denominator first? Could you walk "
    "me through what happens, step by step, with one half plus one third, without giving away the final answer?",
]


def sentence(participant: int, index: int, seed: int = 0) -> str:
    """A message for this participant's `index`th send: 20 to 400 characters."""
    rng = random.Random(f"{seed}:{participant}:{index}")
    pool = rng.choices((SHORT, MEDIUM, LONG), weights=(5, 4, 2))[0]
    text = rng.choice(pool)
    if rng.random() < 0.3 and len(text) < 300:  # sometimes two thoughts in one message
        text = f"{text} {rng.choice(SHORT)}"
    return text[:400]


def lengths() -> tuple[int, int]:
    every = [len(t) for t in SHORT + MEDIUM + LONG]
    return min(every), max(every)
