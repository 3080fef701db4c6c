"""Q/A pairs from the chatterbot-corpus package's English YAML files; label = file category.

The package is located through its installed metadata and never imported.
"""

from __future__ import annotations

import importlib.metadata
import random
from functools import lru_cache
from pathlib import Path

import yaml

from backend.core.data.task import Example, TaskData

# Answers longer than this (code listings, essays) cannot fit a short generation budget.
MAX_ANSWER_CHARS = 300


def corpus_files() -> list[Path]:
    """The English YAML files of the installed chatterbot-corpus distribution."""
    try:
        dist = importlib.metadata.distribution("chatterbot-corpus")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            "chatterbot: the chatterbot-corpus package is not installed "
            "(pip install --no-deps chatterbot-corpus==1.3.3)"
        ) from None
    prefix = "chatterbot_corpus/data/english/"
    names = sorted(str(f) for f in dist.files or [] if str(f).startswith(prefix))
    return [Path(str(dist.locate_file(n))) for n in names if n.endswith(".yml")]


@lru_cache(maxsize=1)
def read_pairs() -> tuple[Example, ...]:
    """Consecutive turns of every conversation as (question, answer) pairs, parsed once."""
    pairs = []
    for path in corpus_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        label = str(doc["categories"][0]).lower()
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list):  # a YAML slip in trivia.yml leaves a bare string
                continue
            turns = [" ".join(str(t).split()) for t in conv]
            for question, answer in zip(turns, turns[1:], strict=False):
                if question and answer and len(answer) <= MAX_ANSWER_CHARS:
                    pairs.append(Example(f"Question: {question}\nAnswer:", f" {answer}", label))
    return tuple(pairs)


def load_chatterbot(seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    """Seeded split by question: 10% eval (or n_eval), the rest train (capped at n_train).

    Many questions have several answers; all pairs of one question stay on the same side
    so the eval questions are unseen in training.
    """
    pairs = list(read_pairs())
    rng = random.Random(f"chatterbot:{seed}")
    questions = sorted({ex.prompt for ex in pairs})
    rng.shuffle(questions)
    rank = {q: i for i, q in enumerate(questions)}
    pairs.sort(key=lambda ex: rank[ex.prompt])  # stable: one question's pairs stay together
    eval_set = pairs[: n_eval or max(1, len(pairs) // 10)]
    held_out = {ex.prompt for ex in eval_set}
    train = [ex for ex in pairs if ex.prompt not in held_out]
    rng.shuffle(train)
    labels = sorted({ex.label for ex in pairs})
    return TaskData("chatterbot", train[:n_train], eval_set, "accuracy", labels, "contains")
