"""Downloading exports: zip contents per format, 404/422 messages, no way out of the run dir."""

from __future__ import annotations

import io
import zipfile

import pytest

from backend.core.runs import run_dir

API = "/api/v1/experiments"


@pytest.fixture
def export(create, settings):
    """An experiment with a fake export directory (merged and adapter, no adapter-rank)."""
    experiment = create()
    root = settings.runs_dir / experiment["id"] / "export"
    files = {
        "merged/config.json": b'{"model_type": "llama"}',
        "merged/model.safetensors": b"\x00" * 3_000_000,  # more than one stream chunk
        "adapter/adapter_config.json": b'{"r": 8}',
        "adapter/adapter_model.safetensors": b"lora",
        "adapter/backbone_delta.safetensors": b"delta",
        "adapter/README.md": b"# how to apply",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return experiment, files


def _zip(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize(("fmt", "folder"), [("merged", "merged"), ("adapter", "adapter")])
def test_download_zips_the_export_folder(client, export, fmt, folder):
    experiment, files = export

    response = client.get(f"{API}/{experiment['id']}/download", params={"format": fmt})

    expected = {k: v for k, v in files.items() if k.startswith(f"{folder}/")}
    assert _zip(response) == expected
    assert f"fedmomentum-{experiment['id']}-{fmt}.zip" in response.headers["content-disposition"]


def test_download_delta_is_the_one_file(client, export):
    experiment, _ = export

    response = client.get(f"{API}/{experiment['id']}/download", params={"format": "delta"})

    assert _zip(response) == {"backbone_delta.safetensors": b"delta"}


def test_missing_export_is_404_naming_it(client, export, create):
    experiment, _ = export
    fresh = create()

    rank = client.get(f"{API}/{experiment['id']}/download", params={"format": "adapter-rank"})
    none = client.get(f"{API}/{fresh['id']}/download", params={"format": "merged"})

    assert rank.status_code == none.status_code == 404
    assert "no export/adapter-rank yet" in rank.json()["detail"]
    assert f"experiment {fresh['id']!r} has no export/merged yet" in none.json()["detail"]


def test_unknown_format_is_422_listing_the_allowed(client, export):
    experiment, _ = export

    response = client.get(f"{API}/{experiment['id']}/download", params={"format": "../../etc"})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "format"]
    for allowed in ("merged", "adapter", "delta", "adapter-rank"):
        assert f"'{allowed}'" in error["msg"]


def test_symlinks_out_of_the_run_directory_are_not_followed(client, export, settings, tmp_path):
    experiment, files = export
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0")
    export_dir = settings.runs_dir / experiment["id"] / "export"
    (export_dir / "merged" / "leak.txt").symlink_to(secret / "passwd")
    (export_dir / "merged" / "leakdir").symlink_to(secret, target_is_directory=True)
    (export_dir / "adapter-rank").symlink_to(secret, target_is_directory=True)

    merged = client.get(f"{API}/{experiment['id']}/download", params={"format": "merged"})
    rank = client.get(f"{API}/{experiment['id']}/download", params={"format": "adapter-rank"})

    assert set(_zip(merged)) == {"merged/config.json", "merged/model.safetensors"}
    assert rank.status_code == 404


def test_ids_cannot_leave_the_runs_directory(client, settings):
    encoded = client.get(f"{API}/..%2F..%2Fetc/download", params={"format": "merged"})

    assert encoded.status_code == 404
    with pytest.raises(ValueError, match="leaves"):
        run_dir(settings.runs_store(), "../../etc")
