"""The OpenAPI schema: the bearer token as a security scheme (the Authorize button of /docs),
a description for every tag, and the error answers the routes really give declared."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from backend.api.app import create_app
from backend.core.settings import Settings

API = "/api/v1"


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"))
    return TestClient(create_app(settings)).get(f"{API}/openapi.json").json()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def test_the_bearer_token_is_a_security_scheme_of_every_guarded_route(spec):
    schemes = spec["components"]["securitySchemes"]
    [(name, scheme)] = schemes.items()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "FEDMOMENTUM_API_TOKEN" in scheme["description"]

    for path, method, op in _operations(spec):
        open_route = path in (f"{API}/health",)
        assert op.get("security") == (None if open_route else [{name: []}]), (method, path)


def test_every_tag_has_a_description(spec):
    described = {t["name"]: t.get("description", "") for t in spec["tags"]}
    used = {tag for _, _, op in _operations(spec) for tag in op.get("tags", [])}

    assert used == set(described)
    assert all(len(text) > 20 for text in described.values()), described


def test_the_error_answers_are_declared(spec):
    read = spec["paths"][f"{API}/experiments/{{experiment_id}}"]["get"]["responses"]
    cancel = spec["paths"][f"{API}/experiments/{{experiment_id}}/cancel"]["post"]["responses"]
    create = spec["paths"][f"{API}/experiments"]["post"]["responses"]
    problem = {"$ref": "#/components/schemas/Problem"}

    assert {"200", "401", "404", "422"} <= set(read)
    assert read["401"]["content"]["application/json"]["schema"] == problem
    assert "Authorization: Bearer" in read["401"]["description"]
    assert read["404"]["content"]["application/json"]["schema"] == problem
    assert {"401", "404", "409", "422"} <= set(cancel)
    assert {"401", "413", "422"} <= set(create) and "404" not in create
    assert spec["components"]["schemas"]["Problem"]["required"] == ["detail"]


def test_each_declared_401_and_404_is_what_the_route_answers(spec, settings: Settings):
    """The declarations are true: with a token set, every route declaring 401 answers 401
    without it, and every GET declaring 404 answers 404 for an unknown id (with it)."""
    locked = settings.model_copy(update={"api_token": SecretStr("t")})
    with TestClient(create_app(locked)) as client:
        silo = client.post(
            f"{API}/silos", json={"name": "s"}, headers={"Authorization": "Bearer t"}
        )
        tokens = {"api": "t", "silo": silo.json()["token"]}  # the silo routes: a silo's token
        for path, method, op in _operations(spec):
            url = path.replace("{experiment_id}", "nope").replace("{sweep_id}", "nope")
            url = url.replace("{round}", "0").replace("{task_id}", "0").replace("{name}", "nope")
            token = tokens["silo" if path.startswith(f"{API}/silo/") else "api"]
            if "401" in op["responses"]:
                assert client.request(method, url).status_code == 401, (method, path)
            if "404" in op["responses"] and method == "get":
                answer = client.get(url, headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 404, (path, answer.text)
