"""Generated GSM8K-style arithmetic word problems; the operation type is the label.

Numbers appear in each question in the order they are used (a, b, then c), so the answer
can be recomputed from the question and its label alone.
"""

from __future__ import annotations

import random

from backend.core.data.task import Example, TaskData

_NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farah",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
]
_ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "stamps",
    "shells",
    "cards",
]
_TEMPLATES = {
    "add": [
        "{n} has {a} {x}. {n} gets {b} more {x}. How many {x} does {n} have now?",
        "A shop sold {a} {x} in the morning and {b} {x} later. How many {x} did it sell?",
    ],
    "subtract": [
        "{n} had {a} {x} and gave away {b}. How many {x} does {n} have left?",
        "A box holds {a} {x}. {n} takes out {b} of them. How many {x} remain in the box?",
    ],
    "multiply": [
        "{n} buys {a} bags with {b} {x} in each bag. How many {x} does {n} buy?",
        "There are {a} shelves with {b} {x} on each shelf. How many {x} are there in all?",
    ],
    "divide": [
        "{n} shares {a} {x} equally among {b} friends. How many {x} does each friend get?",
        "{n} packs {a} {x} into {b} boxes with the same number in each. How many {x} go in a box?",
    ],
    "two-step": [
        "{n} buys {a} packs of {b} {x} and then gives away {c}. How many {x} does {n} have left?",
        "A class has {a} tables with {b} {x} on each, and {c} {x} get lost. How many {x} are left?",
    ],
}
OPERATIONS = tuple(_TEMPLATES)


def _numbers(op: str, rng: random.Random) -> tuple[list[int], str, int]:
    """The question's numbers, the worked step and the answer for one operation."""
    if op == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return [a, b], f"{a} + {b} = {a + b}", a + b
    if op == "subtract":
        a = rng.randint(10, 99)
        b = rng.randint(1, a - 1)
        return [a, b], f"{a} - {b} = {a - b}", a - b
    if op == "multiply":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return [a, b], f"{a} * {b} = {a * b}", a * b
    if op == "divide":
        b, q = rng.randint(2, 12), rng.randint(2, 12)
        return [b * q, b], f"{b * q} / {b} = {q}", q
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    c = rng.randint(1, a * b - 1)
    return [a, b, c], f"{a} * {b} = {a * b}. {a * b} - {c} = {a * b - c}", a * b - c


def make_problem(rng: random.Random) -> Example:
    """One random word problem with a one-line worked solution ending in "#### <answer>"."""
    op = rng.choice(OPERATIONS)
    nums, step, result = _numbers(op, rng)
    fields = dict(zip("abc", nums, strict=False), n=rng.choice(_NAMES), x=rng.choice(_ITEMS))
    question = rng.choice(_TEMPLATES[op]).format(**fields)
    return Example(f"Question: {question}\nAnswer:", f" {step}\n#### {result}", op)


def load_arith(seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    """Train and eval problems from separate seeded streams; no eval question is in train."""
    eval_rng, train_rng = random.Random(f"arith:eval:{seed}"), random.Random(f"arith:train:{seed}")
    eval_set = [make_problem(eval_rng) for _ in range(n_eval or 200)]
    held_out = {ex.prompt for ex in eval_set}
    train: list[Example] = []
    while len(train) < (n_train or 2000):
        ex = make_problem(train_rng)
        if ex.prompt not in held_out:
            train.append(ex)
    return TaskData("arith", train, eval_set, "exact_match", sorted(OPERATIONS), "number")
