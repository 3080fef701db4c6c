"""The runner on a non-local artifact store (fsspec memory://: folders commit by marker, not
rename) and cross-silo clients trained from the data their worker holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from backend.core.config import parse_config
from backend.core.runs import RunPaths
from backend.core.settings import get_settings
from backend.core.store import Store
from tests.integration.test_runner import tiny
from workers import runner


@pytest.fixture
def silo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Two silo files (12 and 20 records) that this process's settings hold."""
    files = {}
    for silo, n in (("hospital-a", 12), ("hospital-b", 20)):
        path = tmp_path / f"{silo}.jsonl"
        rows = [{"prompt": f"{silo}: {i} + 2 =", "response": f"#### {i + 2}"} for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[silo] = path
    monkeypatch.setenv("FEDMOMENTUM_SILO_DATA", json.dumps({k: str(v) for k, v in files.items()}))
    get_settings.cache_clear()
    yield files
    get_settings.cache_clear()


def metrics(store: Store, kind: str) -> list[dict[str, object]]:
    lines = store.read_text("metrics.jsonl").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_run_lives_entirely_in_an_object_store(tmp_path: Path) -> None:
    cfg = parse_config(tiny(name="memory"))
    url = f"memory://fm-{uuid.uuid4().hex[:8]}/runs/exp"

    summaries = runner.run(cfg, url, progress=False, export_rank=2)
    local = runner.run(cfg, tmp_path, progress=False, export_rank=2)

    store = Store(url)
    assert [s["round"] for s in summaries] == [0, 1]
    assert [s["eval_loss"] for s in summaries] == pytest.approx([s["eval_loss"] for s in local])
    assert all(store.committed(RunPaths.state(t)) for t in range(3))
    assert store.committed("export")
    for name in (
        "merged/config.json",
        "adapter/adapter_model.safetensors",
        "adapter-rank/adapter_model.safetensors",
    ):
        assert store.isfile(f"export/{name}")
    assert store.read_json("export/export.json")["adapter_rank"]["rank"] == 2
    assert len(metrics(store, "round")) == 2
    ours = runner.read_group(RunPaths(store), 2, 4)[0]
    theirs = runner.read_group(RunPaths.at(tmp_path), 2, 4)[0]
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    assert runner.run(cfg, url, progress=False) == []  # finished: resuming finds every commit


def test_silo_clients_train_on_the_data_their_worker_holds(
    tmp_path: Path, silo_data: dict[str, Path]
) -> None:
    fed = {"num_clients": 4, "clients_per_round": 4, "rounds": 1,
           "silos": {"hospital-a": [0], "hospital-b": [3, 1]}}  # fmt: skip
    cfg = parse_config(tiny(name="silos", federation=fed))

    runner.run(cfg, tmp_path, progress=False)

    split = json.loads((tmp_path / "split.json").read_text())["clients"]
    assert split[0] is None and split[1] is None and split[3] is None  # no server-side data
    assert split[2] and all(isinstance(i, int) for i in split[2])
    sizes = {r["client"]: r["n_examples"] for r in metrics(Store(tmp_path), "client")}
    assert sizes[0] == 12  # all of hospital-a's records
    assert sizes[3] + sizes[1] == 20 and sizes[3] > 0 and sizes[1] > 0  # hospital-b's, split
    assert sizes[2] == len(split[2])
    for path in silo_data.values():  # the server's files never name the silos' data
        assert not any(
            str(path) in f.read_text(errors="ignore") for f in tmp_path.rglob("*") if f.is_file()
        )


def test_a_worker_without_the_silos_data_fails_the_client_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDMOMENTUM_SILO_DATA", json.dumps({"hospital-b": "/nowhere.jsonl"}))
    get_settings.cache_clear()
    try:
        fed = {"num_clients": 2, "clients_per_round": 2, "rounds": 1, "silos": {"hospital-a": [0]}}
        paths = runner.prepare(
            parse_config(tiny(name="nodata", federation=fed)), RunPaths.at(tmp_path)
        )

        record = runner.train_client(paths, 0, 0)
    finally:
        get_settings.cache_clear()

    assert not record.ok
    assert "client 0 is pinned to silo 'hospital-a'" in (record.error or "")
    assert "FEDMOMENTUM_SILO_DATA names: hospital-b" in (record.error or "")
    assert runner.train_client(paths, 0, 1).ok  # the pooled client trains as usual


def test_a_token_silo_client_trains_a_language_model_from_its_own_file_alone(
    tmp_path: Path, silo_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.runner import clients

    server_file = tmp_path / "server.jsonl"
    rows = [{"prompt": f"{i} + 1 =", "response": f"#### {i + 1}"} for i in range(16)]
    server_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fed = {"num_clients": 2, "clients_per_round": 2, "rounds": 1,
           "silos": {"hospital-a": [0]}, "token_silos": ["hospital-a"]}  # fmt: skip
    data = {"n_eval": 4, "partition": "iid"}
    cfg = parse_config(tiny(name="token", dataset=str(server_file), data=data, federation=fed))
    paths = runner.prepare(cfg, RunPaths.at(tmp_path / "run"))
    server_file.unlink()  # the server's dataset does not exist at the silo
    clients._task.cache_clear()
    monkeypatch.setenv("FEDMOMENTUM_SILO_DATA", "{}")  # nor does any worker setting
    get_settings.cache_clear()

    record = runner.train_client(paths, 0, 0, silo_data=str(silo_data["hospital-a"]))

    assert record.ok, record.error
    assert record.n_examples == 12  # every record of the silo's own file
    assert Store(tmp_path / "run").isfile(RunPaths.upload(0, 0))
