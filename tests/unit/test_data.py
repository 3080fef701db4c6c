"""Datasets, partitions and tokenization of backend.core.data (offline, seeded, fast)."""

from __future__ import annotations

import collections
import csv
import json
import math
import re
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from backend.core.data import DATASETS, Example, TaskData, load_dataset, partition, split_hash
from backend.core.data.wordnet import load_wordnet
from tests.helpers import byte_tokenizer
from workers.encoding import collate, tokenize_example

SEEDS = [0, 1, 7, 42]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: one token per UTF-8 byte, built offline."""
    return byte_tokenizer()


@pytest.fixture(scope="module")
def arith() -> TaskData:
    return load_dataset("arith", seed=3)


def labelled(labels: str) -> list[Example]:
    return [Example(f"q{i}", f"r{i}", label) for i, label in enumerate(labels)]


# --- datasets ---------------------------------------------------------------------------


def test_catalog_names() -> None:
    assert set(DATASETS) == {"arith", "wordnet-topics", "chatterbot"}


@pytest.mark.parametrize("name", ["arith", "wordnet-topics", "chatterbot"])
def test_builtin_datasets_are_seeded(name: str) -> None:
    a = load_dataset(name, seed=5, n_train=300, n_eval=40)
    b = load_dataset(name, seed=5, n_train=300, n_eval=40)
    c = load_dataset(name, seed=6, n_train=300, n_eval=40)
    assert a == b and a.train != c.train
    assert len(a.train) == 300 and len(a.eval) == 40
    assert not {ex.prompt for ex in a.eval} & {ex.prompt for ex in a.train}
    assert a.labels == sorted(set(a.labels)) and {ex.label for ex in a.train} <= set(a.labels)
    # The held-out set does not move when the training budget changes.
    assert load_dataset(name, seed=5, n_train=100, n_eval=40).eval == a.eval


def test_arith_defaults_and_answers(arith: TaskData) -> None:
    assert (len(arith.train), len(arith.eval), arith.metric) == (2000, 200, "exact_match")
    assert arith.labels == sorted(["add", "subtract", "multiply", "divide", "two-step"])
    ops = {
        "add": lambda a, b: a + b,
        "subtract": lambda a, b: a - b,
        "multiply": lambda a, b: a * b,
        "divide": lambda a, b: a // b,
        "two-step": lambda a, b, c: a * b - c,
    }
    for ex in arith.train + arith.eval:
        nums = [int(n) for n in re.findall(r"\d+", ex.prompt)]
        if ex.label == "divide":
            assert nums[0] % nums[1] == 0
        expected = ops[ex.label](*nums)
        assert arith.answer(ex) == str(expected) == arith.extract(ex.response)
        assert ex.response.endswith(f"#### {expected}")
        assert arith.is_correct(ex, f"so the total is {expected}.")
        assert not arith.is_correct(ex, f"#### {expected + 1}")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("5 + 7 = 12\n#### 12", "12"),
        ("#### 1,234.50", "1234.5"),
        ("about 7.0 apples", "7"),
        ("#### -03", "-3"),
        ("x = 4 then #### nothing", "4"),
        ("no digits", ""),
    ],
)
def test_extract_number(arith: TaskData, text: str, number: str) -> None:
    assert arith.extract(text) == number


def test_wordnet_topics_balanced() -> None:
    task = load_dataset("wordnet-topics", seed=0)
    assert (len(task.train), len(task.eval), task.metric) == (2000, 200, "accuracy")
    assert len(task.labels) >= 8
    for split in (task.train, task.eval):
        counts = collections.Counter(ex.label for ex in split)
        assert set(counts) == set(task.labels)
        assert max(counts.values()) - min(counts.values()) <= 1
    ex = task.train[0]
    assert ex.response == f" {ex.label}" and all(label in ex.prompt for label in task.labels)
    assert task.is_correct(ex, f" {ex.label.upper()}. It is")
    assert task.extract("Perhaps plant, or animal") == "plant"
    assert task.extract("planted nothing") == ""


def test_wordnet_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install .*wordnet-base"):
        load_wordnet(0, None, None, root=tmp_path)


def test_wordnet_too_many_examples() -> None:
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("wordnet-topics", n_train=100_000)


def test_chatterbot_contains_answer() -> None:
    task = load_dataset("chatterbot", seed=1)
    assert task.metric == "accuracy" and {"ai", "food", "trivia"} <= set(task.labels)
    assert len(task.eval) >= 1 and len(task.train) > 10 * len(task.eval) // 2
    ex = task.eval[0]
    assert task.is_correct(ex, "Well:  " + ex.response.upper() + " ok")
    assert not task.is_correct(ex, "")


# --- user files -------------------------------------------------------------------------


def test_jsonl_generative_roundtrip(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"Say {i}", "response": f" word{i}", "label": f"t{i % 3}"} for i in range(30)
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = load_dataset(str(path), seed=2)
    assert len(task.eval) == 3 and len(task.train) == 27
    got = {(ex.prompt, ex.response, ex.label) for ex in task.train + task.eval}
    assert got == {(r["prompt"], r["response"], r["label"]) for r in rows}
    assert task.labels == ["t0", "t1", "t2"] and task.metric == "accuracy"
    assert task.is_correct(task.eval[0], "it is" + task.eval[0].response + "!")
    assert load_dataset(str(path), seed=2) == task


def test_csv_classification_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(
            [(f"review number {i}, nice", "pos" if i % 2 else "neg") for i in range(10)]
        )
    task = load_dataset(str(path), seed=0)
    assert (len(task.train), len(task.eval)) == (9, 1)
    assert task.labels == ["neg", "pos"] and task.metric == "accuracy"
    ex = task.train[0]
    assert "Choices: neg, pos" in ex.prompt and ex.response == f" {ex.label}"
    assert task.is_correct(ex, f" {ex.label.upper()}")


def test_gsm8k_style_file_uses_exact_match(tmp_path: Path) -> None:
    path = tmp_path / "math.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1?", "response": f"#### {i + 1}"}) + "\n" for i in range(5)
        )
    )
    task = load_dataset(str(path))
    assert task.metric == "exact_match" and task.labels == ["all"]
    csv_path = tmp_path / "zero.csv"
    csv_path.write_text("prompt,response,label\na,b,0\nc,d,1\n")
    assert load_dataset(str(csv_path)).labels == ["0", "1"]


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (
            ".jsonl",
            '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n',
            r"bad\.jsonl: line 2: missing column 'response'",
        ),
        (
            ".jsonl",
            '{"prompt": "a", "response": "b"}\nnot json\n',
            r"bad\.jsonl: line 2: invalid JSON",
        ),
        (".jsonl", '["a", "b"]\n', r"bad\.jsonl: line 1: expected a JSON object"),
        (".csv", "text,label\nhello,x\nworld,\n", r"bad\.csv: line 3: missing column 'label'"),
        (
            ".csv",
            "question\nwhat\nwhy\n",
            r"bad\.csv: unknown layout; columns found: question; layouts accepted: chat",
        ),
        (".jsonl", '{"prompt": "a", "response": "b"}\n', r"at least 2 examples"),
    ],
)
def test_bad_user_files(tmp_path: Path, suffix: str, content: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_dataset(str(path))


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (
            "x",
            {},
            "dataset: unknown 'x'; allowed: wordnet-topics, arith, chatterbot, a "
            ".jsonl/.json/.csv/.parquet path, or hf:<id>",
        ),
        ("missing.csv", {}, "dataset: file not found"),
        ("arith", {"n_train": 0}, "n_train: must be >= 1"),
        ("arith", {"n_eval": -1}, "n_eval: must be >= 1"),
        ("hf:some/dataset", {}, "needs network access"),
    ],
)
def test_load_dataset_errors(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset(name, **kwargs)


# --- partitions -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "k"), [(200, 7), (10, 10), (33, 4)])
def test_partition_is_a_seeded_cover(method: str, seed: int, n: int, k: int) -> None:
    examples = labelled("abcde" * (n // 5) + "a" * (n % 5))
    parts = partition(examples, k, method, alpha=0.1, seed=seed)
    assert len(parts) == k and all(parts)
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert parts == partition(examples, k, method, alpha=0.1, seed=seed)


def test_partition_seed_changes_split() -> None:
    examples = labelled("abcd" * 50)
    for method in ("iid", "dirichlet", "shards"):
        assert partition(examples, 5, method, seed=0) != partition(examples, 5, method, seed=1)


def test_iid_sizes_are_even() -> None:
    sizes = [len(p) for p in partition(labelled("ab" * 51), 4)]
    assert max(sizes) - min(sizes) <= 1


def _label_entropy(examples: list[Example], parts: list[list[int]]) -> float:
    """Mean entropy (nats) of the clients' label distributions."""
    total = 0.0
    for part in parts:
        counts = collections.Counter(examples[i].label for i in part)
        total -= sum(c / len(part) * math.log(c / len(part)) for c in counts.values())
    return total / len(parts)


def test_non_iid_methods_skew_labels() -> None:
    examples = labelled("abcdefghij" * 100)
    for seed in SEEDS:
        iid = _label_entropy(examples, partition(examples, 10, "iid", seed=seed))
        skewed = _label_entropy(
            examples, partition(examples, 10, "dirichlet", alpha=0.05, seed=seed)
        )
        shards = _label_entropy(examples, partition(examples, 10, "shards", seed=seed))
        assert iid > 0.9 * math.log(10)
        assert skewed < 0.5 * iid and shards < 0.5 * iid
    wide = partition(examples, 10, "dirichlet", alpha=100.0, seed=0)
    assert _label_entropy(examples, wide) > 0.9 * math.log(10)


def test_shards_give_few_labels_per_client() -> None:
    examples = labelled("abcdefghij" * 40)
    for part in partition(examples, 10, "shards", shards_per_client=2, seed=3):
        assert len({examples[i].label for i in part}) <= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "random"}, "method: unknown 'random'; allowed: iid, dirichlet, shards"),
        ({"num_clients": 0}, "num_clients: must be >= 1"),
        ({"num_clients": 11}, "num_clients: more clients (11) than examples (10)"),
        ({"method": "dirichlet", "alpha": 0.0}, "alpha: must be > 0"),
        ({"alpha": float("nan")}, "alpha: must be > 0"),
        ({"method": "shards", "shards_per_client": 0}, "shards_per_client: must be >= 1"),
    ],
)
def test_partition_errors(kwargs: dict, message: str) -> None:
    args = {"num_clients": 2, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        partition(labelled("ab" * 5), **args)


def test_split_hash(arith: TaskData) -> None:
    parts = partition(arith.train, 4, seed=0)
    digest = split_hash(parts, arith)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == split_hash(partition(arith.train, 4, seed=0), load_dataset("arith", seed=3))
    assert digest != split_hash(partition(arith.train, 4, seed=1), arith)


# --- tokenization -----------------------------------------------------------------------


def test_tokenize_masks_prompt(tokenizer: PreTrainedTokenizerFast) -> None:
    ex = Example("Question: 2+2?\nAnswer:", " 4\n#### 4", "add")
    enc = tokenize_example(ex, tokenizer, max_length=256)
    n_prompt, eos = len(ex.prompt.encode()), tokenizer.eos_token_id
    assert len(enc["input_ids"]) == n_prompt + len(ex.response.encode()) + 1
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert enc["input_ids"][-1] == eos and enc["attention_mask"] == [1] * len(enc["input_ids"])
    assert tokenizer.decode(enc["input_ids"][n_prompt:-1]) == ex.response


def test_tokenize_truncation(tokenizer: PreTrainedTokenizerFast) -> None:
    long_prompt = Example("x" * 100 + "END:", " yes", "a")
    enc = tokenize_example(long_prompt, tokenizer, max_length=16)
    assert len(enc["input_ids"]) == 16
    assert tokenizer.decode(enc["input_ids"][:11]).endswith("END:")  # cut from the left
    assert tokenizer.decode([t for t in enc["labels"] if t != -100]) == " yes</s>"
    both_long = tokenize_example(Example("p" * 50, " " + "r" * 50, "a"), tokenizer, max_length=10)
    n_answer = sum(t != -100 for t in both_long["labels"])
    assert len(both_long["input_ids"]) == 10 and n_answer == 5
    tiny = tokenize_example(Example("p" * 5, " " + "r" * 50, "a"), tokenizer, max_length=2)
    assert [t != -100 for t in tiny["labels"]] == [False, True]
    with pytest.raises(ValueError, match="max_length"):
        tokenize_example(long_prompt, tokenizer, max_length=1)


def test_collate_right_pads(tokenizer: PreTrainedTokenizerFast) -> None:
    items = [
        tokenize_example(Example("ab", " c", "x"), tokenizer, 32),
        tokenize_example(Example("abcdef", " gh", "x"), tokenizer, 32),
    ]
    batch = collate(items, pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 10)
    short = len(items[0]["input_ids"])
    assert batch["input_ids"][0, short:].tolist() == [tokenizer.pad_token_id] * (10 - short)
    assert batch["labels"][0, short:].tolist() == [-100] * (10 - short)
    assert batch["attention_mask"].sum(1).tolist() == [short, 10]
    assert batch["input_ids"][1].tolist() == items[1]["input_ids"]
