"""Dataset layouts (prompt/response, text/label, Alpaca, chat) in every file format and from
`datasets` directories, and prompts through a tokenizer's chat template (offline, fast)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from transformers import PreTrainedTokenizerFast

from backend.core.checks import server_paths
from backend.core.config import ConfigError, ExperimentConfig, parse_config
from backend.core.data import Example, load_dataset
from backend.core.data.files import ALPACA_INPUT, ALPACA_NO_INPUT, parse_hf
from tests.helpers import byte_tokenizer
from workers.encoding import IGNORE_INDEX, tokenize_example, uses_chat_template
from workers.training import encode

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """The byte tokenizer with a chat template whose turn markers are plain text."""
    templated = byte_tokenizer()
    templated.chat_template = TEMPLATE
    return templated


def alpaca_rows(n: int = 10) -> list[dict[str, str]]:
    """Alpaca records, every other one with an input."""
    return [
        {"instruction": f"Add one to {i}.", "input": f"{i}" if i % 2 else "", "output": f"{i + 1}"}
        for i in range(n)
    ]


def chat_rows(n: int = 10) -> list[dict[str, object]]:
    """Three-turn conversations ending with a user turn after the reply that is learnt."""
    return [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Double {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
                {"role": "user", "content": "Thanks!"},
            ],
            "label": "even" if i % 2 == 0 else "odd",
        }
        for i in range(n)
    ]


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    """``rows`` in the format the suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                )
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def every_example(name: str) -> list[Example]:
    task = load_dataset(name, seed=0)
    return task.train + task.eval


# --- layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_alpaca_files_use_alpacas_template_and_keep_the_instruction(tmp_path, suffix):
    path = write(tmp_path / f"alpaca{suffix}", alpaca_rows())

    examples = {ex.response: ex for ex in every_example(str(path))}

    assert len(examples) == 10
    with_input, without = examples["4"], examples["3"]  # rows 3 (input "3") and 2 (no input)
    assert with_input.prompt == ALPACA_INPUT.format(instruction="Add one to 3.", input="3")
    assert with_input.prompt.endswith(
        "### Instruction:\nAdd one to 3.\n\n### Input:\n3\n\n### Response:"
    )
    assert without.prompt == ALPACA_NO_INPUT.format(instruction="Add one to 2.")
    assert "### Input" not in without.prompt
    assert with_input.messages == (("user", "Add one to 3.\n\n3"),)
    assert without.messages == (("user", "Add one to 2."),)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_chat_files_learn_the_last_assistant_turn(tmp_path, suffix):
    path = write(tmp_path / f"chat{suffix}", chat_rows())

    task = load_dataset(str(path), seed=0)
    ex = next(e for e in task.train + task.eval if e.response == " 6")

    assert ex.messages == (("system", "Be brief."), ("user", "Double 3?"))
    assert ex.prompt == "system: Be brief.\nuser: Double 3?\nassistant:"
    assert ex.label == "odd" and task.labels == ["even", "odd"]
    assert task.scoring == "contains" and task.is_correct(ex, "It is 6.")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_prompt_response_and_text_label_in_every_format(tmp_path, suffix):
    qa = write(
        tmp_path / f"qa{suffix}",
        [{"question": f"{i}+1?", "answer": f"#### {i + 1}"} for i in range(6)],
    )
    cls = write(
        tmp_path / f"cls{suffix}",
        [{"sentence": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)],
    )

    qa_task, cls_task = load_dataset(str(qa)), load_dataset(str(cls))

    assert {(e.prompt, e.response) for e in qa_task.train + qa_task.eval} == {
        (f"{i}+1?", f"#### {i + 1}") for i in range(6)
    }
    assert qa_task.metric == "exact_match"
    assert cls_task.labels == ["neg", "pos"] and cls_task.scoring == "label"
    assert all("Choices: neg, pos" in e.prompt for e in cls_task.train)


def test_instruction_response_records_without_output_are_prompt_response(tmp_path):
    rows = [{"instruction": f"Say {i}", "context": "", "response": f"{i}"} for i in range(4)]

    examples = every_example(str(write(tmp_path / "dolly.jsonl", rows)))

    assert {(e.prompt, e.response) for e in examples} == {(f"Say {i}", f"{i}") for i in range(4)}


def test_unknown_layout_lists_the_columns_and_the_layouts(tmp_path):
    path = write(tmp_path / "odd.jsonl", [{"title": "a", "body": "b"}, {"title": "c", "body": "d"}])

    with pytest.raises(ValueError) as err:
        load_dataset(str(path))

    message = str(err.value)
    assert "unknown layout; columns found: title, body; layouts accepted:" in message
    for layout in (
        "chat: messages",
        "alpaca: instruction + output",
        "prompt/response",
        "text/label",
    ):
        assert layout in message


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"messages": [{"role": "user", "content": "hi"}]}] * 2,
            r"record 1: messages need a non-empty assistant turn",
        ),
        ([{"messages": "not a list"}] * 2, r"record 1: 'messages' must be a non-empty list"),
        ([{"messages": [{"role": "user"}]}] * 2, r"record 1: messages\[0\] needs a text 'role'"),
        (
            [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}],
            r"record 2: missing column 'output'",
        ),
    ],
)
def test_bad_records_name_their_place(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(str(write(tmp_path / "bad.json", rows)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 1}', "expected a JSON list of records"),
        ("[1, 2]", "record 1: expected an object"),
        ('{"a": 1}\n{"a": 2}\n', "line 2: invalid JSON (Extra data); one record per line"),
    ],
)
def test_json_must_be_a_list_of_records(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset(str(path))


def test_config_accepts_every_file_format():
    for name in ("a.jsonl", "a.json", "a.csv", "a.parquet", "A.PARQUET", "hf:org/name@test"):
        assert ExperimentConfig(dataset=name).dataset == name
    with pytest.raises(ValidationError, match=r"\.jsonl/\.json/\.csv/\.parquet path"):
        ExperimentConfig(dataset="a.txt")
    assert ExperimentConfig().data.chat_template == "auto"
    with pytest.raises(ConfigError, match="data.chat_template: Input should be 'auto' or 'off'"):
        parse_config({"data": {"chat_template": "on"}})


# --- `datasets` directories -------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    """A DatasetDict saved with save_to_disk: Alpaca rows, class labels as integers."""
    labels = datasets.ClassLabel(names=["easy", "hard"])
    features = datasets.Features(
        {k: datasets.Value("string") for k in ("instruction", "input", "output")}
        | {"label": labels}
    )

    def split(offset: int) -> datasets.Dataset:
        rows = [dict(r, label=i % 2) for i, r in enumerate(alpaca_rows(8))]
        for r in rows:
            r["output"] = f"{offset}:{r['output']}"
        return datasets.Dataset.from_list(rows, features=features)

    path = tmp_path / "saved"
    datasets.DatasetDict({"train": split(0), "test": split(1)}).save_to_disk(str(path))
    return path


def test_a_saved_dataset_loads_the_split_asked_for(saved):
    train = every_example(f"hf:{saved}")
    test = every_example(f"hf:{saved}@test")

    assert all(e.response.startswith("0:") for e in train) and len(train) == 8
    assert all(e.response.startswith("1:") for e in test)
    ex = next(e for e in test if e.response == "1:4")
    assert "### Instruction:\nAdd one to 3.\n\n### Input:\n3" in ex.prompt  # input kept apart
    assert {e.label for e in test} == {"easy", "hard"}  # ClassLabel ids become names
    with pytest.raises(ValueError, match=r"no split 'validation'; splits: train, test"):
        load_dataset(f"hf:{saved}@validation")


def test_hf_specs_parse_and_a_missing_directory_is_named(tmp_path):
    assert parse_hf("hf:org/name") == ("org/name", None, "train")
    assert parse_hf("hf:org/name:main@test[:50]") == ("org/name", "main", "test[:50]")
    assert parse_hf("hf:./local/dir@test") == ("./local/dir", None, "test")
    with pytest.raises(ValueError, match="no such directory"):
        load_dataset(f"hf:{tmp_path}/missing")


def test_server_paths_confine_saved_datasets_to_the_data_roots(saved, tmp_path):
    def check(dataset: str, allow_hub: bool = False) -> tuple[str, list]:
        cfg, problems = server_paths(
            ExperimentConfig(dataset=dataset),
            model_roots=[tmp_path],
            data_roots=[tmp_path],
            allow_hub=allow_hub,
        )
        return cfg.dataset, problems

    assert check("hf:./saved@test") == (f"hf:{saved.resolve()}@test", [])
    outside, problems = check("hf:/etc@train")
    assert "no dataset directory under the server's data roots" in problems[0][1]
    assert "FEDMOMENTUM_ALLOW_HUB" in check("hf:org/name")[1][0][1]
    assert check("hf:org/name", allow_hub=True) == ("hf:org/name", [])


# --- chat templates ---------------------------------------------------------------------------


def test_chat_template_shapes_the_prompt_and_the_loss_skips_it(chat_tokenizer):
    ex = Example(
        "system: Be brief.\nuser: Double 3?\nassistant:",
        " 6",
        "odd",
        (("system", "Be brief."), ("user", "Double 3?")),
    )

    enc = tokenize_example(ex, chat_tokenizer, 256, chat=True)

    templated = "<|system|>Be brief.</s><|user|>Double 3?</s><|assistant|>"
    n_prompt = len(chat_tokenizer(templated, add_special_tokens=False)["input_ids"])
    assert chat_tokenizer.decode(enc["input_ids"][:n_prompt]) == templated
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert chat_tokenizer.decode(enc["labels"][n_prompt:]) == "6</s>"  # no leading space
    plain = tokenize_example(ex, chat_tokenizer, 256, chat=False)
    assert chat_tokenizer.decode(plain["input_ids"]) == ex.prompt + " 6</s>"


def test_encode_follows_data_chat_template(tokenizer, chat_tokenizer):
    ex = Example("What is 2+2?", " 4", "all")
    assert not uses_chat_template(tokenizer, "auto")
    assert uses_chat_template(chat_tokenizer, "auto") and not uses_chat_template(
        chat_tokenizer, "off"
    )

    auto = encode([ex], chat_tokenizer, 64, "causal-lm", ["all"])[0]
    off = encode([ex], chat_tokenizer, 64, "causal-lm", ["all"], chat_template="off")[0]

    assert chat_tokenizer.decode(auto["input_ids"]) == "<|user|>What is 2+2?</s><|assistant|>4</s>"
    assert chat_tokenizer.decode(off["input_ids"]) == "What is 2+2? 4</s>"
    n_answer = sum(label != IGNORE_INDEX for label in auto["labels"])
    assert n_answer == 2  # "4" and </s>: the whole templated prompt is masked
