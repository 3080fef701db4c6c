"""The remote commands of ``fedmomentum`` (submit, list, status, follow, download, cancel) as
a user runs them: separate processes against a real ``fedmomentum up`` (embedded worker)
that wants an API token."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors import safe_open

from tests.service.conftest import ROOT, Service, _env, tiny_config

TOKEN = "cli-test-token"
RANK = 4


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("cli")
    service = Service(tmp, _env(tmp, api_token=TOKEN))
    service.http.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        service.api(worker=True)
        yield service
    finally:
        service.close()


def _cli_env(service: Service, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
    return env | {"FEDMOMENTUM_SERVER": service.url, "FEDMOMENTUM_API_TOKEN": TOKEN} | extra


def fedmomentum(service: Service, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``fedmomentum ARGS`` in its own process; the server and token from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        env=_cli_env(service, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _config_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**changes)))
    return path


def _submitted_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    match = re.match(r"submitted (\S+) ", result.stdout)
    assert match, result.stdout
    return match.group(1)


def test_submit_follow_list_status_and_download(service: Service, tmp_path: Path) -> None:
    config = _config_file(tmp_path, name="cli-run", lora={"rank": RANK})

    experiment_id = _submitted_id(fedmomentum(service, "submit", str(config)))
    followed = fedmomentum(service, "follow", experiment_id)
    listed = fedmomentum(service, "list")
    shown = fedmomentum(service, "status", experiment_id)
    as_json = json.loads(fedmomentum(service, "status", experiment_id, "--json").stdout)
    out = tmp_path / "download"
    downloaded = fedmomentum(
        service, "download", experiment_id, "--format", "adapter", "--out", str(out)
    )

    assert followed.returncode == 0, followed.stdout + followed.stderr
    progress = followed.stdout.splitlines()
    rounds = [line for line in progress if line.startswith("rounds [")]
    assert [r.split("] ")[1].split()[0] for r in rounds] == ["1/2", "2/2"]  # each round once
    assert re.search(r"rounds \[#+\] 2/2  accuracy \d\.\d{3}  eval_loss \d+\.\d{4}", rounds[-1])
    assert any(re.fullmatch(r"round 2/2: client \d+ done", line) for line in progress)
    assert progress[-1] == f"experiment {experiment_id} completed"

    assert listed.returncode == 0
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(experiment_id)]
    assert row.split()[1:3] == ["completed", "2/2"] and row.endswith("cli-run")
    assert shown.returncode == 0
    assert "status    completed" in shown.stdout and "rounds    2/2" in shown.stdout
    assert as_json["status"] == "completed" and as_json["config"]["lora"]["rank"] == RANK

    assert downloaded.returncode == 0, downloaded.stderr
    adapter = out / "adapter"
    assert f"{adapter} (" in downloaded.stdout
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == RANK
    with safe_open(adapter / "adapter_model.safetensors", "np") as weights:
        shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}  # noqa: SIM118
    lora_a = {k: s for k, s in shapes.items() if "lora_A" in k}
    lora_b = {k: s for k, s in shapes.items() if "lora_B" in k}
    assert lora_a and len(lora_a) == len(lora_b)
    assert all(s[0] == RANK for s in lora_a.values()), lora_a
    assert all(s[1] == RANK for s in lora_b.values()), lora_b
    assert not list(out.glob("*.part"))


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a suite run in the background (``&``, nohup) ignores SIGINT,
    and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cancel_a_running_experiment_and_ctrl_c_of_follow(service: Service, tmp_path: Path) -> None:
    config = _config_file(
        tmp_path, name="cli-long", federation={"num_clients": 4, "clients_per_round": 2,
                                               "rounds": 50}
    )  # fmt: skip
    experiment_id = _submitted_id(fedmomentum(service, "submit", str(config)))
    service.wait_until(experiment_id, lambda e: e["status"] == "running")

    follower = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "follow", experiment_id],
        env=_cli_env(service),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert follower.stdout is not None
    first = follower.stdout.readline()  # it is following
    follower.send_signal(signal.SIGINT)
    _, interrupted = follower.communicate(timeout=30)
    cancelled = fedmomentum(service, "cancel", experiment_id)
    shown = fedmomentum(service, "status", experiment_id)
    followed = fedmomentum(service, "follow", experiment_id)
    again = fedmomentum(service, "cancel", experiment_id)

    assert first.startswith(("round ", "status: ", "rounds ")), first
    assert follower.returncode == 130
    assert "Traceback" not in interrupted and "interrupted" in interrupted
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{experiment_id}: cancelled"
    assert "status    cancelled" in shown.stdout
    assert followed.returncode == 1  # followed to its end: not completed
    assert followed.stdout.splitlines()[-1] == f"experiment {experiment_id} cancelled"
    assert again.returncode == 1 and "409" in again.stderr
    assert service.get(experiment_id)["status"] == "cancelled"


def test_a_bad_config_exits_1_naming_the_field(service: Service, tmp_path: Path) -> None:
    config = _config_file(tmp_path, lora={"rank": 0}, federation={"rounds": 2, "bogus": 1})

    result = fedmomentum(service, "submit", str(config))

    assert result.returncode == 1
    assert "the server answered 422" in result.stderr
    assert re.search(r"^lora\.rank: .*greater than 0", result.stderr, re.M), result.stderr
    assert re.search(r"^federation\.bogus: ", result.stderr, re.M), result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_exits_1(service: Service, tmp_path: Path) -> None:
    result = fedmomentum(service, "submit", str(tmp_path / "nope.yaml"))

    assert result.returncode == 1
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_2(service: Service) -> None:
    missing = fedmomentum(service, "status")
    unknown = fedmomentum(service, "download", "x", "--format", "pickle")

    assert missing.returncode == 2 and "the following arguments are required: id" in missing.stderr
    assert unknown.returncode == 2 and "invalid choice: 'pickle'" in unknown.stderr


def test_a_wrong_or_missing_token_exits_1_with_401(service: Service) -> None:
    wrong = fedmomentum(service, "list", "--token", "not-the-token")
    missing = fedmomentum(service, "status", "abc", FEDMOMENTUM_API_TOKEN="")

    for result in (wrong, missing):
        assert result.returncode == 1
        assert "the server answered 401" in result.stderr
        assert "Authorization: Bearer" in result.stderr and "Traceback" not in result.stderr


def test_server_option_and_unreachable_server_exit_1(service: Service) -> None:
    shown = fedmomentum(service, "list", "--server", service.url, FEDMOMENTUM_SERVER="http://x")
    unreachable = fedmomentum(service, "list", "--server", "http://127.0.0.1:9")

    assert shown.returncode == 0 and shown.stdout.startswith("id ")
    assert unreachable.returncode == 1
    assert "cannot reach the server at http://127.0.0.1:9" in unreachable.stderr


def test_version(service: Service) -> None:
    result = fedmomentum(service, "--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"fedmomentum {version('fedmomentum')}"


def test_an_unknown_experiment_exits_1_with_404(service: Service) -> None:
    result = fedmomentum(service, "status", "no-such-id")

    assert result.returncode == 1
    assert "404" in result.stderr and "'no-such-id' not found" in result.stderr


@pytest.fixture(autouse=True)
def _nothing_left_running(service: Service) -> Iterator[None]:
    """Each test leaves the embedded worker idle for the next."""
    yield
    deadline = time.monotonic() + 60
    while any(e["status"] in ("queued", "running") for e in service.http.get(
        "/experiments").json()["data"]):  # fmt: skip
        assert time.monotonic() < deadline, "an experiment is still active"
        time.sleep(0.2)
