"""User datasets from .jsonl / .csv files, and Hugging Face Hub datasets when online.

Columns: prompt/response (generative, optional label for partitioning) or text/label
(classification: the prompt lists the choices, the response is the label).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backend.core.data.task import Example, TaskData

Row = tuple[int, dict[str, Any]]  # (line number, record)
EVAL_SHARE = 0.1
# Common column names of hub datasets, mapped to ours (GSM8K: question/answer).
_ALIASES = {
    "question": "prompt",
    "instruction": "prompt",
    "input": "prompt",
    "answer": "response",
    "output": "response",
    "completion": "response",
    "sentence": "text",
    "content": "text",
}


def _read_rows(path: Path) -> list[Row]:
    """Records with their line numbers; ValueError naming the file and line on bad syntax."""
    if not path.is_file():
        raise ValueError(f"dataset: file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            return [(reader.line_num, dict(row)) for row in reader]
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {n}: expected a JSON object")
        rows.append((n, record))
    return rows


def _field(row: Row, column: str, source: str) -> str:
    """A required non-empty column as text."""
    value = row[1].get(column)
    if value is None or str(value).strip() == "":
        raise ValueError(
            f"{source}: line {row[0]}: missing column '{column}' "
            "(columns: prompt, response[, label] or text, label)"
        )
    return str(value)


def _optional_label(row: Row) -> str:
    """The partitioning label of a prompt/response record; "all" when absent (0 is a label)."""
    value = row[1].get("label")
    return "all" if value is None or str(value).strip() == "" else str(value)


def _classification_prompt(text: str, labels: list[str]) -> str:
    return f"Which label fits this text? Choices: {', '.join(labels)}\nText: {text}\nLabel:"


def rows_to_task(
    name: str, rows: list[Row], seed: int, n_train: int | None, n_eval: int | None
) -> TaskData:
    """Examples from records (schema chosen by the first one), split 90/10 by seed."""
    if len(rows) < 2:
        raise ValueError(f"{name}: needs at least 2 examples (one to train, one to evaluate)")
    first = rows[0][1]
    if "prompt" in first or "response" in first or "text" not in first:
        examples = [
            Example(
                _field(r, "prompt", name),
                _field(r, "response", name),
                _optional_label(r),
            )
            for r in rows
        ]
        number = all("####" in ex.response for ex in examples)  # GSM8K-style final answers
        metric, scoring = ("exact_match", "number") if number else ("accuracy", "contains")
    else:
        pairs = [(_field(r, "text", name), _field(r, "label", name)) for r in rows]
        labels = sorted({label for _, label in pairs})
        examples = [
            Example(_classification_prompt(t, labels), f" {label}", label) for t, label in pairs
        ]
        metric, scoring = "accuracy", "label"
    order = list(range(len(examples)))
    random.Random(f"file:{seed}").shuffle(order)
    n_ev = max(1, round(len(examples) * EVAL_SHARE))
    eval_set = [examples[i] for i in order[:n_ev]][:n_eval]
    train = [examples[i] for i in order[n_ev:]][:n_train]
    labels = sorted({ex.label for ex in examples})
    return TaskData(name, train, eval_set, metric, labels, scoring)


def load_file(path: Path, seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    """A user .jsonl or .csv dataset."""
    return rows_to_task(str(path), _read_rows(path), seed, n_train, n_eval)


def _hub_rows(records: Iterable[dict[str, Any]], label_names: list[str] | None) -> list[Row]:
    """Hub records renamed to our columns; integer class labels become their names."""
    rows = []
    for n, record in enumerate(records, start=1):
        row = {_ALIASES.get(k, k): v for k, v in record.items()}
        if label_names is not None and isinstance(row.get("label"), int):
            row["label"] = label_names[row["label"]]
        rows.append((n, row))
    return rows


def load_hub(spec: str, seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    """``hf:<id>[:<config>]`` through the optional `datasets` package (needs the network)."""
    hub_id, _, config = spec.removeprefix("hf:").partition(":")
    try:
        import datasets  # optional: not a dependency of this project
    except ImportError:
        raise ValueError(
            f"dataset: {spec!r} needs network access and the `datasets` package "
            "(pip install datasets); use a built-in dataset or a .jsonl/.csv file offline"
        ) from None
    try:
        train = datasets.load_dataset(hub_id, config or None, split="train")
    except Exception as e:  # offline, unknown id, gated...: one clear message
        raise ValueError(f"dataset: could not load {spec!r} (it needs network access): {e}") from e
    feature = train.features.get("label")
    names = getattr(feature, "names", None)
    return rows_to_task(spec, _hub_rows(train, names), seed, n_train, n_eval)
