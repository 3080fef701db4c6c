"""User datasets: local .jsonl / .json / .csv / .parquet files, and `datasets` datasets
(``hf:`` ids on the Hub, or a directory written by ``save_to_disk``) with the `hf` extra.

Files and hub rows share the layouts below (``LAYOUTS``), recognised by the first record's
columns: prompt/response (generative, an optional label for partitioning), text/label
(classification: the prompt lists the choices, the response is the label), Alpaca
(instruction + optional input + output, prompted with Stanford Alpaca's template) and chat
(``messages``: the last assistant turn is the response, the turns before it the prompt).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backend.core.data.task import Example, TaskData
from backend.core.hub import hub_reachable

Row = tuple[str, dict[str, Any]]  # (where it is, e.g. "line 3", record)
EVAL_SHARE = 0.1
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

# Column names each layout accepts, first choice first: common names of hub datasets map to
# ours (GSM8K: question/answer; Dolly: instruction/response; others: input/output).
_PROMPT = ("prompt", "question", "instruction", "input")
_RESPONSE = ("response", "answer", "completion", "output")
_TEXT = ("text", "sentence", "content")
LAYOUTS = {
    "chat": "messages (a list of {role, content}) [+ label]",
    "alpaca": "instruction + output [+ input] [+ label]",
    "prompt/response": f"{'|'.join(_PROMPT)} + {'|'.join(_RESPONSE)} [+ label]",
    "text/label": f"{'|'.join(_TEXT)} + label",
}

# Stanford Alpaca's prompt (tatsu-lab/stanford_alpaca, train.py: PROMPT_DICT); the output
# follows "### Response:" directly, as in its training targets.
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


# --- reading files ----------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[Row]:
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
        rows.append((f"line {n}", record))
    return rows


def _read_json(path: Path) -> list[Row]:
    """A .json file holding one list of records."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        hint = (
            "; one record per line is JSON Lines: name the file .jsonl"
            if e.msg == "Extra data"
            else ""
        )
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}){hint}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return _records(path, records)


def _read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq  # a dependency of the project; imported when needed
    except ImportError:
        raise ValueError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file: one message
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    return _records(path, records)


def _records(source: Path | str, records: Iterable[Any]) -> list[Row]:
    rows = []
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {n}: expected an object with named columns")
        rows.append((f"record {n}", record))
    return rows


def _read_rows(path: Path) -> list[Row]:
    """Records with where they are; ValueError naming the file and place on bad syntax."""
    if not path.is_file():
        raise ValueError(f"dataset: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            return [(f"line {reader.line_num}", dict(row)) for row in reader]
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    return _read_jsonl(path)


# --- layouts ----------------------------------------------------------------------------------


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


def _field(row: Row, column: str, source: str) -> str:
    """A required non-empty column as text."""
    value = row[1].get(column)
    if not _present(value):
        raise ValueError(f"{source}: {row[0]}: missing column '{column}'")
    return str(value)


def _optional_label(row: Row) -> str:
    """The partitioning label of a generative record; "all" when absent (0 is a label)."""
    value = row[1].get("label")
    return str(value) if _present(value) else "all"


def _first(columns: Sequence[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in columns), None)


def detect_layout(source: str, columns: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The layout the columns fit and the column chosen for each of its roles; ValueError
    listing the columns found and the layouts accepted when none fits."""
    if "messages" in columns:
        return "chat", {"messages": "messages"}
    if "instruction" in columns and "output" in columns:
        return "alpaca", {}
    prompt, response = _first(columns, _PROMPT), _first(columns, _RESPONSE)
    if prompt and response:
        return "prompt/response", {"prompt": prompt, "response": response}
    text = _first(columns, _TEXT)
    if text and "label" in columns:
        return "text/label", {"text": text}
    found = ", ".join(columns) or "none"
    accepted = "; ".join(f"{name}: {cols}" for name, cols in LAYOUTS.items())
    raise ValueError(
        f"{source}: unknown layout; columns found: {found}; layouts accepted: {accepted}"
    )


def _classification_prompt(text: str, labels: list[str]) -> str:
    return f"Which label fits this text? Choices: {', '.join(labels)}\nText: {text}\nLabel:"


def alpaca_example(row: Row, source: str) -> Example:
    """Alpaca's prompt; for chat templates one user turn: the instruction, then the input."""
    instruction, output = _field(row, "instruction", source), _field(row, "output", source)
    extra = row[1].get("input")
    if _present(extra):
        prompt = ALPACA_INPUT.format(instruction=instruction, input=extra)
        user = f"{instruction}\n\n{extra}"
    else:
        prompt, user = ALPACA_NO_INPUT.format(instruction=instruction), instruction
    return Example(prompt, output, _optional_label(row), (("user", user),))


def _turns(row: Row, source: str) -> list[tuple[str, str]]:
    messages = row[1].get("messages")
    if isinstance(messages, str):  # a CSV cell holds the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            messages = None
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{source}: {row[0]}: 'messages' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(messages):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(f"{source}: {row[0]}: messages[{i}] needs a text 'role' and 'content'")
        turns.append((role, content))
    return turns


def chat_example(row: Row, source: str) -> Example:
    """The last assistant turn is the response, every turn before it the prompt (rendered
    as "role: content" lines for models without a chat template)."""
    turns = _turns(row, source)
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
    if last < 1 or not turns[last][1].strip():
        raise ValueError(
            f"{source}: {row[0]}: messages need a non-empty assistant turn after at least one "
            "other turn (the assistant's reply is what is learnt)"
        )
    context = tuple(turns[:last])
    prompt = "".join(f"{role}: {content}\n" for role, content in context) + "assistant:"
    return Example(prompt, " " + turns[last][1], _optional_label(row), context)


def rows_to_examples(name: str, rows: list[Row]) -> tuple[str, list[Example], str, str]:
    """(layout, the examples in record order, metric, scoring) of records whose layout is
    chosen by the first one; ValueError naming the place of the first bad record."""
    if len(rows) < 2:
        raise ValueError(f"{name}: needs at least 2 examples (one to train, one to evaluate)")
    layout, cols = detect_layout(name, list(rows[0][1]))
    if layout == "text/label":
        pairs = [(_field(r, cols["text"], name), _field(r, "label", name)) for r in rows]
        labels = sorted({label for _, label in pairs})
        examples = [
            Example(_classification_prompt(t, labels), f" {label}", label) for t, label in pairs
        ]
        return layout, examples, "accuracy", "label"
    if layout == "chat":
        examples = [chat_example(r, name) for r in rows]
    elif layout == "alpaca":
        examples = [alpaca_example(r, name) for r in rows]
    else:
        examples = [
            Example(
                _field(r, cols["prompt"], name),
                _field(r, cols["response"], name),
                _optional_label(r),
            )
            for r in rows
        ]
    number = all("####" in ex.response for ex in examples)  # GSM8K-style final answers
    metric, scoring = ("exact_match", "number") if number else ("accuracy", "contains")
    return layout, examples, metric, scoring


def rows_to_task(
    name: str, rows: list[Row], seed: int, n_train: int | None, n_eval: int | None
) -> TaskData:
    """Examples from records (layout chosen by the first one), split 90/10 by seed."""
    _, examples, metric, scoring = rows_to_examples(name, rows)
    order = list(range(len(examples)))
    random.Random(f"file:{seed}").shuffle(order)
    n_ev = max(1, round(len(examples) * EVAL_SHARE))
    eval_set = [examples[i] for i in order[:n_ev]][:n_eval]
    train = [examples[i] for i in order[n_ev:]][:n_train]
    labels = sorted({ex.label for ex in examples})
    return TaskData(name, train, eval_set, metric, labels, scoring)


def read_file(path: Path) -> tuple[str, list[Row], list[Example]]:
    """A user file's layout, records and examples in file order, checked exactly as
    ``load_file`` checks them (ValueError naming the file and the place)."""
    rows = _read_rows(path)
    layout, examples, _, _ = rows_to_examples(str(path), rows)
    return layout, rows, examples


def load_file(path: Path, seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    """A user .jsonl, .json, .csv or .parquet dataset."""
    return rows_to_task(str(path), _read_rows(path), seed, n_train, n_eval)


# --- `datasets` datasets ----------------------------------------------------------------------


def _hub_rows(records: Iterable[dict[str, Any]], label_names: list[str] | None) -> list[Row]:
    """Rows of a `datasets` split; integer class labels become their names."""
    rows = []
    for n, record in enumerate(records, start=1):
        row = dict(record)
        if label_names is not None and isinstance(row.get("label"), int):
            row["label"] = label_names[row["label"]]
        rows.append((f"row {n}", row))
    return rows


def parse_hf(spec: str) -> tuple[str, str | None, str]:
    """``hf:<id or directory>[:<config>][@<split>]`` -> (id or directory, config, split).

    A directory is a path starting with "/", "./", "../" or "~" (written by ``save_to_disk``
    or holding data files); anything else is a Hub id. The split defaults to "train".
    """
    body = spec.removeprefix("hf:")
    body, at, split = body.rpartition("@") if "@" in body else (body, "", "train")
    if at and not split:
        raise ValueError(f"dataset: {spec!r}: empty split after '@'")
    if is_local_hf(body):
        return body, None, split
    name, _, config = body.partition(":")
    if not name:
        raise ValueError(f"dataset: {spec!r}: no dataset id after 'hf:'")
    return name, config or None, split


def is_local_hf(target: str) -> bool:
    """Whether an ``hf:`` target names a local directory rather than a Hub id."""
    return target.startswith(("/", "./", "../", "~"))


def _open_split(datasets: Any, spec: str, target: str, config: str | None, split: str) -> Any:
    if is_local_hf(target):
        path = Path(target).expanduser()
        if not path.is_dir():
            raise ValueError(f"dataset: {spec!r}: no such directory {path}")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            saved = datasets.load_from_disk(str(path))  # written by save_to_disk
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    have = ", ".join(saved)
                    raise ValueError(f"dataset: {spec!r}: no split {split!r}; splits: {have}")
                return saved[split]
            if split != "train":
                raise ValueError(f"dataset: {spec!r}: holds one split (name none with '@')")
            return saved
        return datasets.load_dataset(str(path), split=split)  # a folder of data files
    if not hub_reachable("HF_DATASETS_OFFLINE"):
        raise ValueError(f"dataset: could not load {spec!r}: it needs network access to the Hub")
    try:
        return datasets.load_dataset(target, config, split=split)
    except Exception as e:  # offline, unknown id, gated, bad split...: one clear message
        raise ValueError(f"dataset: could not load {spec!r} (it needs network access): {e}") from e


def load_hub(spec: str, seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    """A `datasets` split: ``hf:<id>[:<config>][@<split>]`` from the Hub (online) or
    ``hf:<directory>[@<split>]`` saved locally; needs the `hf` extra."""
    target, config, split = parse_hf(spec)
    try:
        import datasets  # the optional `hf` extra
    except ImportError:
        raise ValueError(
            f"dataset: {spec!r} needs the `datasets` package (pip install 'fedmomentum[hf]') "
            "and, for Hub ids, network access; offline use a built-in dataset or a local file"
        ) from None
    data = _open_split(datasets, spec, target, config, split)
    feature = data.features.get("label")
    names = getattr(feature, "names", None)
    return rows_to_task(spec, _hub_rows(data, names), seed, n_train, n_eval)
