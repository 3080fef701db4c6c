"""The deployment files, tested without a Docker engine (none runs on this machine or CI):
docker-compose.yml validates with ``docker-compose config``, refuses to start without its
secrets and names only Settings fields; the images' commands parse with the CLI; the API
image's command serves (and migrates) with no torch importable, against the real PostgreSQL
and Redis; the workers' health check tells a live worker from a missing one."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backend.cli import build_parser
from backend.core.settings import Settings
from tests.helpers import free_port, postgres_schema, require_redis, unique
from tests.service.conftest import Proc, Service

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "FEDMOMENTUM_API_TOKEN": "api-secret",
}
REMOTE = {
    "FEDMOMENTUM_BROKER_URL": "redis://:pw@main-host:6379/0",
    "FEDMOMENTUM_DATABASE_URL": "postgresql+psycopg://fedmomentum:pw@main-host:5432/fedmomentum",
    "FEDMOMENTUM_ARTIFACT_URL": "s3://bucket/fedmomentum",
}
SETTINGS = {f"FEDMOMENTUM_{name.upper()}" for name in Settings.model_fields}


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose ARGS`` in the repository, with only ``env`` (and PATH) set."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing: `make install` installs Debian's package")
    return subprocess.run(
        [exe, *args], cwd=ROOT, env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def config(*files: str, env: dict[str, str]) -> dict[str, Any]:
    """The resolved compose configuration (validated by docker-compose)."""
    result = compose(*(a for f in files for a in ("-f", f)), "config", env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return config("docker-compose.yml", env=SECRETS)


@pytest.fixture(scope="module")
def remote() -> dict[str, Any]:
    return config("docker/remote-worker.yml", env=REMOTE)


def dockerfile(name: str) -> str:
    return (ROOT / "docker" / f"{name}.Dockerfile").read_text()


def test_compose_validates_with_health_checks_and_a_gpu_per_worker(main: dict[str, Any]) -> None:
    services = main["services"]
    assert set(services) == {"api", "worker", "worker-gpu1", "redis", "postgres"}
    assert all(s.get("healthcheck", {}).get("test") for s in services.values())
    gpus = {}
    for name in ("worker", "worker-gpu1"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus[name] = device.get("device_ids") or device["count"]
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"
    assert gpus == {"worker": 1, "worker-gpu1": ["1"]}
    assert services["worker-gpu1"]["profiles"] == ["multi-gpu"]
    api = services["api"]
    assert {d: c["condition"] for d, c in api["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    # One artifact volume, mounted where both images keep their data directory.
    images = dockerfile("api") + dockerfile("worker")
    [data_dir] = set(re.findall(r"FEDMOMENTUM_DATA_DIR=(\S+)", images))
    for name in ("api", "worker", "worker-gpu1"):
        assert services[name]["volumes"] == [f"artifacts:{data_dir}:rw"]
    assert "artifacts" in main["volumes"]
    assert api["ports"] == ["127.0.0.1:8000:8000/tcp"]  # unauthenticated: not on every address


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_its_secrets(missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}

    result = compose("config", env=env)

    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


@pytest.mark.parametrize("missing", sorted(REMOTE))
def test_a_remote_worker_needs_the_main_machines_addresses(missing: str) -> None:
    env = {k: v for k, v in REMOTE.items() if k != missing}

    result = compose("-f", "docker/remote-worker.yml", "config", env=env)

    assert result.returncode != 0 and f"set {missing}" in result.stderr


def _service_envs(main: dict[str, Any], remote: dict[str, Any]) -> dict[str, dict[str, str]]:
    envs = {f"main:{n}": s.get("environment", {}) for n, s in main["services"].items()}
    envs["remote:worker"] = remote["services"]["worker"]["environment"]
    for name in ("api", "worker"):
        envs[f"{name}.Dockerfile"] = dict(re.findall(r"(FEDMOMENTUM_\w+)=(\S+)", dockerfile(name)))
    return envs


def test_every_variable_is_a_settings_field_and_parses(
    main: dict[str, Any], remote: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    envs = _service_envs(main, remote)
    named = {k for env in envs.values() for k in env if k.startswith("FEDMOMENTUM_")}
    assert named - SETTINGS == set()
    assert {"FEDMOMENTUM_DATABASE_URL", "FEDMOMENTUM_BROKER_URL", "FEDMOMENTUM_ARTIFACT_URL",
            "FEDMOMENTUM_SILO_DATA", "FEDMOMENTUM_DATA_DIR"} <= named  # fmt: skip

    for env in (envs["main:api"], envs["worker.Dockerfile"] | envs["main:worker"]):
        for key in [k for k in os.environ if k.startswith("FEDMOMENTUM_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()  # the empty optional values mean the defaults
        assert settings.database_url.startswith("postgresql+psycopg://fedmomentum:pg-secret@")
        assert settings.broker_url == "redis://:redis-secret@redis:6379/0"
        assert settings.artifact_url == "" and settings.artifact_options == {}
        assert settings.task_time_limit_s == Settings.model_fields["task_time_limit_s"].default
        assert settings.api_workers == 1
    monkeypatch.setenv("FEDMOMENTUM_SILO_DATA", '{"hospital-a": "/data/a.jsonl"}')
    assert Settings().silo_data == {"hospital-a": "/data/a.jsonl"}


def _commands(main: dict[str, Any], remote: dict[str, Any]) -> dict[str, list[str]]:
    services = main["services"]
    commands = {f"main:{n}": services[n]["command"] for n in ("api", "worker", "worker-gpu1")}
    commands["remote:worker"] = remote["services"]["worker"]["command"]
    for name in ("api", "worker"):
        [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile(name), re.M)
        commands[f"{name}.Dockerfile"] = yaml.safe_load(cmd)
    return commands


def test_the_images_run_the_fedmomentum_cli(main: dict[str, Any], remote: dict[str, Any]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"fedmomentum": "backend.cli:main"}
    for name in ("api", "worker"):
        assert re.findall(r"^ENTRYPOINT (.*)$", dockerfile(name), re.M) == ['["fedmomentum"]']
    for where, command in _commands(main, remote).items():
        args = build_parser().parse_args(command)
        assert args.command in ("up", "worker"), where
        if args.command == "worker":
            assert args.name in (None, "worker@%h"), where  # what the health check pings


def _worker_extra_modules() -> set[str]:
    """Top-level modules of the packages only the workers install (pyproject's extra)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {re.split(r"[=<>\[]", r)[0].lower().replace("_", "-") for r in extra["worker"]}
    owners = importlib.metadata.packages_distributions()
    return {
        m
        for m, dists in owners.items()
        if any(d.lower().replace("_", "-") in wanted for d in dists)
    }


def test_the_api_image_installs_no_worker_package() -> None:
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[=<>\[]", r)[0] for r in core}
    modules = _worker_extra_modules()
    assert {"torch", "transformers", "peft", "safetensors"} <= modules
    assert not names & {"torch", "transformers", "peft", "safetensors", "accelerate"}
    assert "pip install --no-cache-dir -e '.[s3]'" in dockerfile("api")  # not the worker extra
    # hf: hub datasets on the workers; tracking: MLflow's client
    assert "-e '.[worker,hf,s3,tracking]'" in dockerfile("worker")


def test_the_api_image_command_migrates_and_serves_without_torch(
    main: dict[str, Any], tmp_path: Path
) -> None:
    blocked = sorted(_worker_extra_modules())
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        BLOCKED = set({blocked!r})

        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed in the API image")

        sys.meta_path.insert(0, _Block())
    """))  # fmt: skip
    api = main["services"]["api"]
    port = free_port()
    command = [a.replace("8000", str(port)).replace("0.0.0.0", "127.0.0.1") for a in api["command"]]
    prefix = unique("fmtest:")
    with postgres_schema() as database_url:
        env = {k: str(v) for k, v in api["environment"].items()}
        env |= {
            "PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1",
            "FEDMOMENTUM_DATABASE_URL": database_url, "FEDMOMENTUM_BROKER_URL": require_redis(),
            "FEDMOMENTUM_BROKER_KEY_PREFIX": prefix, "FEDMOMENTUM_DATA_DIR": str(tmp_path / "data"),
        }  # fmt: skip
        proc = Proc(
            [str(Path(sys.executable).parent / "fedmomentum"), *command], env, tmp_path / "api.log"
        )
        try:
            _wait_healthy(proc, port)
            check = api["healthcheck"]["test"][1:]  # [CMD, python, -c, ...]
            probe = [sys.executable, *check[1:-1], check[-1].replace("8000", str(port))]
            assert subprocess.run(probe, env=env, timeout=30).returncode == 0
            url = f"http://127.0.0.1:{port}/api/v1/experiments"
            config = {"model": "tiny-llama", "dataset": "arith", "data": {"n_train": 20}}
            assert httpx.post(url, json=config).status_code == 401  # the compose token guards it
            token = {"Authorization": f"Bearer {SECRETS['FEDMOMENTUM_API_TOKEN']}"}
            created = httpx.post(url, json=config, headers=token)
            assert created.status_code == 201, created.text  # the migrated schema stores it
            probe_torch = subprocess.run(
                [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
            )
            assert "not installed in the API image" in probe_torch.stderr  # the block works
        finally:
            proc.stop()
            import redis

            client = redis.Redis.from_url(require_redis())
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)
    assert "ImportError" not in proc.output() and "Traceback" not in proc.output()


def _wait_healthy(proc: Proc, port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.alive(), proc.output()[-4000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the API did not answer /health:\n{proc.output()[-4000:]}")


def test_the_worker_health_check_pings_the_live_worker(
    main: dict[str, Any], redis_service: Service
) -> None:
    worker = main["services"]["worker"]
    name = worker["command"][worker["command"].index("--name") + 1]
    redis_service.worker("train,aggregate", name=name)  # Celery expands %h to the host name
    [kind, script] = worker["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    script = script.replace("$$", "$")  # compose's escape: the container's shell sees $HOSTNAME
    env = redis_service.env | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def check(hostname: str) -> subprocess.Popen[bytes]:
        shell = ["sh", "-c", script]
        return subprocess.Popen(shell, env=env | {"HOSTNAME": hostname}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    # Side by side: the unanswered ping waits out its whole --timeout.
    live, other = check(socket.gethostname()), check("no-such-container")
    assert live.wait(60) == 0, shlex.join(["sh", "-c", script])
    assert other.wait(60) != 0


def test_the_readme_explains_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Settings") :]

    assert {name for name in SETTINGS if f"`{name}`" not in table} == set()
