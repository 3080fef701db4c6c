"""FEDMOMENTUM_API_TOKEN: writes and downloads need the bearer token, reads too unless
FEDMOMENTUM_OPEN_READS; health, the OpenAPI schema and the dashboard's files stay open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from backend.api.app import create_app
from backend.core.settings import Settings

TOKEN = "correct-horse-battery-staple"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
API = "/api/v1"


@pytest.fixture(params=[False, True], ids=["closed-reads", "open-reads"])
def guarded(request, settings: Settings, client: TestClient, make_config) -> Iterator[TestClient]:
    """An app with a token (``client`` has made the schema and empties it afterwards)."""
    locked = settings.model_copy(
        update={"api_token": SecretStr(TOKEN), "open_reads": request.param}
    )
    with TestClient(create_app(locked)) as guarded:
        guarded.experiment_id = client.post(f"{API}/experiments", json=make_config()).json()["id"]
        guarded.open_reads = request.param
        yield guarded


def _calls(experiment_id: str) -> dict[str, list[tuple[str, str]]]:
    e = f"{API}/experiments/{experiment_id}"
    return {
        "writes": [("POST", f"{API}/experiments"), ("POST", f"{e}/cancel"),
                   ("POST", f"{e}/clone"), ("DELETE", e)],
        "downloads": [("GET", f"{e}/download"), ("GET", f"{e}/rounds/0/adapter"),
                      ("GET", f"{e}/report")],
        "reads": [("GET", f"{API}/experiments"), ("GET", e), ("GET", f"{e}/metrics"),
                  ("GET", f"{e}/rounds"), ("GET", f"{e}/attempts"), ("GET", f"{e}/diagnostics"),
                  ("GET", f"{e}/manifest"), ("GET", f"{API}/catalog")],
    }  # fmt: skip


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["none", "wrong", "no-scheme", "basic", "longer"],
)  # fmt: skip
def test_without_the_token_writes_and_downloads_are_401(guarded, headers):
    calls = _calls(guarded.experiment_id)
    for method, url in calls["writes"] + calls["downloads"]:
        response = guarded.request(method, url, headers=headers, json={})
        assert response.status_code == 401, (method, url)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in response.json()["detail"]
    for method, url in calls["reads"]:
        status = guarded.request(method, url, headers=headers).status_code
        assert (status != 401) if guarded.open_reads else (status == 401), (url, status)


def test_with_the_token_everything_answers(guarded, make_config):
    calls = _calls(guarded.experiment_id)
    for method, url in calls["reads"] + calls["downloads"]:
        assert guarded.request(method, url, headers=GOOD).status_code != 401, url
    created = guarded.post(f"{API}/experiments", json=make_config(), headers=GOOD)
    assert created.status_code == 201
    assert (
        guarded.post(f"{API}/experiments/{created.json()['id']}/cancel", headers=GOOD).json()[
            "status"
        ]
        == "cancelled"
    )


def test_unknown_experiments_are_401_not_404_without_the_token(guarded):
    # Nobody without the token learns which experiment ids exist.
    assert guarded.get(f"{API}/experiments/nope/download").status_code == 401
    assert guarded.get(f"{API}/experiments/nope/download", headers=GOOD).status_code == 404


def test_health_schema_and_dashboard_stay_open_and_health_says_what_is_guarded(guarded):
    health = guarded.get(f"{API}/health")
    assert health.status_code == 200
    assert health.json()["auth"] == ("writes" if guarded.open_reads else "all")
    for url in (f"{API}/openapi.json", "/", "/static/js/app.js", "/vendor/plotly.min.js"):
        assert guarded.get(url).status_code == 200, url


def test_without_a_token_setting_nothing_is_guarded(client, create):
    experiment = create()
    assert client.get(f"{API}/health").json()["auth"] == "none"
    assert client.get(f"{API}/experiments/{experiment['id']}").status_code == 200
    assert client.post(f"{API}/experiments/{experiment['id']}/cancel").status_code == 200


def test_the_token_is_compared_in_constant_time(guarded, monkeypatch):
    import hmac

    from backend.api import deps

    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", compare)
    guarded.post(f"{API}/experiments/{guarded.experiment_id}/cancel", headers=GOOD)
    assert compared and set(compared) == {(TOKEN.encode(), TOKEN.encode())}
