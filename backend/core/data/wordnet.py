"""WordNet glosses -> topic category, read from Debian's wordnet-base files.

Each line of data.noun is one synset: "offset lex_filenum ss_type ... | gloss". The
lexicographer file number (the second field) is the topic (see wndb(5) / lexnames(5)).
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from backend.core.data.task import Example, TaskData

WORDNET_DIR = Path("/usr/share/wordnet")
# Well-separated noun lexicographer files (WordNet 3.0 numbering) and their short names.
TOPICS = {
    5: "animal",
    6: "artifact",
    8: "body",
    12: "feeling",
    13: "food",
    15: "location",
    18: "person",
    20: "plant",
    27: "substance",
    28: "time",
}
LABELS = sorted(TOPICS.values())


@lru_cache(maxsize=4)
def read_glosses(root: Path = WORDNET_DIR) -> dict[str, tuple[str, ...]]:
    """Definitions per topic in file order, without examples; parsed once per process."""
    path = root / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(
            f"wordnet-topics: {path} not found; install it with "
            "`apt-get install -y --no-install-recommends wordnet-base` (or `make up`)"
        )
    by_topic: dict[str, list[str]] = {label: [] for label in LABELS}
    topic_of: dict[str, str | None] = {}
    with path.open("rb") as fh:
        for line in fh:
            # Skip the license header (indented lines) and topics we do not use, before decoding.
            if line[:1] == b" " or int(line[9:11]) not in TOPICS:
                continue
            gloss = line.partition(b" | ")[2].decode("utf-8", "replace")
            definition = gloss.split('; "')[0].strip().rstrip(";").strip()
            topic = TOPICS[int(line[9:11])]
            if definition in topic_of:  # same text in two synsets: keep once, drop if ambiguous
                if topic_of[definition] != topic:
                    topic_of[definition] = None
                continue
            topic_of[definition] = topic
    for definition, kept in topic_of.items():
        if kept is not None and definition:
            by_topic[kept].append(definition)
    return {label: tuple(defs) for label, defs in by_topic.items()}


def _prompt(definition: str) -> str:
    return (
        f"Which topic is this definition about? Choices: {', '.join(LABELS)}\n"
        f"Definition: {definition}\nTopic:"
    )


def _quotas(total: int, k: int) -> list[int]:
    """Split a total into k near-equal counts (the first ones get the remainder)."""
    return [total // k + (i < total % k) for i in range(k)]


def load_wordnet(
    seed: int, n_train: int | None, n_eval: int | None, root: Path = WORDNET_DIR
) -> TaskData:
    """Balanced, seeded sample per topic; eval is taken first so it does not depend on n_train."""
    glosses = read_glosses(root)
    n_train, n_eval = n_train or 2000, n_eval or 200
    smallest = min(len(defs) for defs in glosses.values())
    if -(-n_train // len(LABELS)) + -(-n_eval // len(LABELS)) > smallest:
        raise ValueError(
            f"n_train: wordnet-topics has {smallest} definitions per topic "
            f"(at most {smallest * len(LABELS)} balanced examples in all)"
        )
    rng = random.Random(f"wordnet:{seed}")
    train, eval_set = [], []
    for label, n_ev, n_tr in zip(
        LABELS, _quotas(n_eval, len(LABELS)), _quotas(n_train, len(LABELS)), strict=True
    ):
        defs = list(glosses[label])
        rng.shuffle(defs)
        eval_set += [Example(_prompt(d), f" {label}", label) for d in defs[:n_ev]]
        train += [Example(_prompt(d), f" {label}", label) for d in defs[n_ev : n_ev + n_tr]]
    rng.shuffle(eval_set)  # eval first: its order must not depend on n_train
    rng.shuffle(train)
    return TaskData("wordnet-topics", train, eval_set, "accuracy", list(LABELS), "label")
