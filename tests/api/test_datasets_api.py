"""Dataset uploads: POST /api/v1/datasets checks a file with the builders' rules, keeps it in
the artifact store and the data root, and summarises it; experiments can then name it."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from pydantic import SecretStr

from backend.api.app import create_app
from backend.core.data.files import ALPACA_NO_INPUT, LAYOUTS
from tests.api.conftest import serve

API = "/api/v1/datasets"


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _csv(records: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


def _parquet(records: list[dict[str, Any]]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), out)
    return out.getvalue()


def _upload(client: TestClient, filename: str, content: bytes, **form: str) -> httpx.Response:
    return client.post(API, files={"file": (filename, content)}, data=form)


def _field_error(response: httpx.Response) -> tuple[list[str], str]:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return error["loc"], error["msg"]


# ---- every layout ---------------------------------------------------------------------------


def test_prompt_response_csv_counts_topics_and_previews_the_first_five(client):
    records = [
        {"question": f"{i} + 1 =", "answer": str(i + 1), "label": "math" if i % 3 else "easy"}
        for i in range(8)
    ]

    response = _upload(client, "sums.csv", _csv(records))

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["path"], body["format"]) == ("sums", "sums.csv", "csv")
    assert (body["layout"], body["n_examples"], body["count_by"]) == ("prompt/response", 8, "topic")
    assert body["preview"] == [{"prompt": f"{i} + 1 =", "response": str(i + 1)} for i in range(5)]
    assert body["counts"] == {"easy": 3, "math": 5}  # i = 0, 3, 6 are "easy"


def test_text_label_parquet_counts_labels_and_previews_text(client):
    records = [{"sentence": f"review {i}", "label": ["pos", "neg", "neu"][i % 3]} for i in range(7)]

    body = _upload(client, "reviews.parquet", _parquet(records)).json()

    assert (body["layout"], body["count_by"], body["n_examples"]) == ("text/label", "label", 7)
    assert body["preview"] == [
        {"text": f"review {i}", "label": ["pos", "neg", "neu"][i % 3]} for i in range(5)
    ]
    assert body["counts"] == {"neg": 2, "neu": 2, "pos": 3}


def test_alpaca_json_previews_the_alpaca_prompt_and_counts_all_without_labels(client):
    records = [{"instruction": f"Say {w}.", "output": w} for w in ("yes", "no", "maybe")]

    body = _upload(client, "alpaca.json", json.dumps(records).encode(), name="say").json()

    assert (body["name"], body["path"], body["layout"]) == ("say", "say.json", "alpaca")
    assert body["preview"][0] == {
        "prompt": ALPACA_NO_INPUT.format(instruction="Say yes."),
        "response": "yes",
    }
    assert (body["count_by"], body["counts"]) == ("topic", {"all": 3})


def test_chat_jsonl_previews_the_turns_before_the_last_assistant_reply(client):
    records = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Capital of {country}?"},
                {"role": "assistant", "content": capital},
            ],
            "label": "geography",
        }
        for country, capital in (("France", "Paris"), ("Peru", "Lima"))
    ]

    body = _upload(client, "chat.jsonl", _jsonl(records)).json()

    assert (body["layout"], body["n_examples"]) == ("chat", 2)
    assert body["preview"][1] == {
        "prompt": "system: Be brief.\nuser: Capital of Peru?\nassistant:",
        "response": " Lima",
    }
    assert body["counts"] == {"geography": 2}


def test_uploads_are_listed_read_back_and_deleted(client, settings):
    records = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    first = _upload(client, "a.jsonl", _jsonl(records)).json()
    _upload(client, "b.csv", _csv(records))

    listed = client.get(API).json()
    one = client.get(f"{API}/a").json()
    deleted = client.delete(f"{API}/a")

    assert [d["name"] for d in listed["data"]] == ["a", "b"] and listed["count"] == 2
    assert one == first
    assert deleted.status_code == 204
    assert client.get(f"{API}/a").status_code == 404
    assert client.delete(f"{API}/a").status_code == 404
    assert not (settings.data_root_dirs[0] / "a.jsonl").exists()
    assert not settings.datasets_store().exists("a.jsonl")
    assert [d["name"] for d in client.get(API).json()["data"]] == ["b"]


def test_the_upload_is_kept_in_the_store_and_the_data_root(client, settings):
    content = _jsonl([{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)])

    body = _upload(client, "kept.jsonl", content).json()

    assert settings.datasets_store().read_bytes("kept.jsonl") == content
    assert (settings.data_root_dirs[0] / body["path"]).read_bytes() == content
    assert body["bytes"] == len(content)


# ---- refusals --------------------------------------------------------------------------------


def test_an_unknown_layout_lists_the_columns_found_and_the_layouts_accepted(client):
    response = _upload(client, "odd.jsonl", _jsonl([{"foo": 1, "bar": 2}, {"foo": 3, "bar": 4}]))

    loc, msg = _field_error(response)
    assert loc == ["body", "file"]
    assert "odd.jsonl: unknown layout; columns found: foo, bar" in msg
    for layout, columns in LAYOUTS.items():
        assert f"{layout}: {columns}" in msg
    assert "/tmp" not in msg and ".upload-" not in msg  # the server's paths stay private


def test_a_bad_record_is_named_by_its_line(client):
    content = b'{"prompt": "a", "response": "b"}\n{"prompt": "c"\n'

    loc, msg = _field_error(_upload(client, "broken.jsonl", content))

    assert msg == "Value error, broken.jsonl: line 2: invalid JSON (Expecting ',' delimiter)"


def test_a_bad_extension_an_empty_file_and_too_few_examples_are_422(client):
    one = _jsonl([{"prompt": "a", "response": "b"}])

    ext = _field_error(_upload(client, "data.txt", one))
    empty = _field_error(_upload(client, "data.jsonl", b""))
    few = _field_error(_upload(client, "data.jsonl", one))

    assert ext == (["body", "file"], "Value error, 'data.txt': unsupported file type; "
                   "allowed: .jsonl, .json, .csv, .parquet")  # fmt: skip
    assert empty == (["body", "file"], "Value error, 'data.jsonl' is empty")
    assert "needs at least 2 examples" in few[1]
    assert client.get(API).json()["count"] == 0  # nothing refused is kept


def test_a_name_that_could_leave_the_folder_is_422(client, settings):
    content = _jsonl([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])

    for name in ("../evil", "a/b", ".hidden", "x.y", "a" * 65):
        loc, msg = _field_error(_upload(client, "ok.jsonl", content, name=name))
        assert loc == ["body", "name"], name
        assert "invalid dataset name" in msg
    assert client.get(f"{API}/..evil").status_code == 422
    assert not list(settings.data_dir.parent.glob("evil*"))


def test_a_file_name_with_a_path_becomes_a_plain_name(client):
    content = _jsonl([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])

    body = _upload(client, "../../etc/my data.v2.jsonl", content).json()

    assert (body["name"], body["path"]) == ("my-data-v2", "my-data-v2.jsonl")


def test_the_same_name_twice_is_409_unless_replaced(client):
    first = _jsonl([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    second = _csv([{"text": f"t{i}", "label": "x"} for i in range(4)])
    _upload(client, "same.jsonl", first)

    again = _upload(client, "same.csv", second)
    replaced = _upload(client, "same.csv", second, replace="true")

    assert again.status_code == 409
    assert "replace=true" in again.json()["detail"]
    assert replaced.status_code == 201
    assert (replaced.json()["path"], replaced.json()["n_examples"]) == ("same.csv", 4)
    assert [d["path"] for d in client.get(API).json()["data"]] == ["same.csv"]


def test_an_upload_over_its_limit_is_413_naming_the_setting(settings):
    client = TestClient(create_app(settings.model_copy(update={"max_dataset_bytes": 2000})))
    content = _jsonl([{"prompt": "x" * 100, "response": "y"} for _ in range(30)])

    response = _upload(client, "big.jsonl", content)

    assert response.status_code == 413
    assert response.json()["detail"] == (
        "request body: larger than the limit of 2000 bytes (FEDMOMENTUM_MAX_DATASET_BYTES)"
    )


def test_a_streamed_upload_without_length_is_cut_at_its_limit(settings):
    """Chunked transfer over real HTTP: the bytes are counted as they arrive."""
    content = _jsonl([{"prompt": "x" * 100, "response": "y"} for _ in range(30)])
    request = httpx.Request("POST", "http://x", files={"file": ("big.jsonl", content)})
    body = request.read()
    chunks = [body[i : i + 500] for i in range(0, len(body), 500)]
    headers = {"content-type": request.headers["content-type"]}
    app = create_app(settings.model_copy(update={"max_dataset_bytes": 2000}))

    with serve(app) as url:
        response = httpx.post(f"{url}{API}", content=iter(chunks), headers=headers)

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert "(FEDMOMENTUM_MAX_DATASET_BYTES)" in response.json()["detail"]


def test_the_app_wide_body_limit_does_not_apply_to_uploads(settings, make_config):
    client = TestClient(create_app(settings.model_copy(update={"max_body_bytes": 1000})))
    content = _jsonl([{"prompt": f"{i} " + "x" * 100, "response": "y"} for i in range(30)])

    uploaded = _upload(client, "wide.jsonl", content)
    config = client.post("/api/v1/experiments", json=make_config(name="n" * 2000))

    assert len(content) > 1000
    assert uploaded.status_code == 201, uploaded.text
    assert config.status_code == 413  # other routes keep the app-wide limit
    assert "(FEDMOMENTUM_MAX_BODY_BYTES)" in config.json()["detail"]


def test_uploads_need_the_token_like_every_write(settings):
    secured = settings.model_copy(update={"api_token": SecretStr("s3cret"), "open_reads": True})
    client = TestClient(create_app(secured))
    content = _jsonl([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])

    refused = _upload(client, "t.jsonl", content)
    accepted = client.post(
        API, files={"file": ("t.jsonl", content)}, headers={"Authorization": "Bearer s3cret"}
    )

    assert refused.status_code == 401
    assert accepted.status_code == 201
    assert client.get(API).json()["count"] == 1  # reads stay open with open_reads
    assert client.delete(f"{API}/t").status_code == 401


# ---- experiments on an upload ------------------------------------------------------------------


def test_an_experiment_on_the_uploaded_dataset_passes_validation(client, settings, make_config):
    records = [{"prompt": f"{i} + 1 =", "response": str(i + 1)} for i in range(20)]
    path = _upload(client, "sums.jsonl", _jsonl(records)).json()["path"]

    created = client.post(
        "/api/v1/experiments", json=make_config(dataset=path, data={"n_train": 12})
    )
    too_many = client.post(
        "/api/v1/experiments",
        json=make_config(dataset=path, federation={"num_clients": 30, "clients_per_round": 2}),
    )

    assert created.status_code == 201, created.text
    real = (settings.data_root_dirs[0] / "sums.jsonl").resolve()
    assert created.json()["config"]["dataset"] == str(real)
    assert too_many.status_code == 422  # its 18 training examples are read and counted
    assert "more clients (30) than training examples (18)" in too_many.text
