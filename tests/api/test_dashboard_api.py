"""Serving the dashboard: pages, modules, plotly.js offline; the manifest; the HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

from backend.api.dashboard import FRONTEND_DIR, plotly_js
from backend.api.report import MODULES
from backend.core.runs import EXPORT_HELP, EXPORTS

API = "/api/v1/experiments"


def _import_map(html: str) -> dict[str, str]:
    found = re.search(r'<script type="importmap">(.*?)</script>', html, re.S)
    assert found, "no import map"
    return json.loads(found.group(1))["imports"]  # type: ignore[no-any-return]


def _imports(path: Path) -> list[str]:
    """The specifiers a module imports (one import statement per line, as the modules do)."""
    return re.findall(r'^import .*? from "([^"]+)";', path.read_text(), re.M)


def test_index_page_and_every_module_it_names(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert '<main id="app">' in html and "/vendor/plotly.min.js" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    imports = _import_map(html)
    # The static report maps the same names (minus the API client, which it never uses).
    assert set(MODULES) - {"report"} <= set(imports)
    for url in [*imports.values(), "/static/js/app.js", "/static/style.css"]:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100


def test_every_page_module_exists_and_imports_only_known_names():
    js = FRONTEND_DIR / "js"
    names = set(_import_map((FRONTEND_DIR / "index.html").read_text()))
    for path in js.rglob("*.js"):
        for spec in _imports(path):
            if spec.startswith("."):
                assert (path.parent / spec).is_file(), f"{path.name} imports missing {spec}"
            else:
                assert spec in names, f"{path.name} imports {spec!r}, not in the import map"


def test_the_report_maps_every_module_its_entry_reaches():
    js = FRONTEND_DIR / "js"
    reached, todo = set(), ["report"]
    while todo:
        name = todo.pop()
        assert name in MODULES, f"the report reaches {name!r} but does not inline it"
        if name not in reached:
            reached.add(name)
            todo.extend(_imports(js / MODULES[name]))
    assert reached == set(MODULES)  # and inlines nothing it never runs


def test_plotly_js_comes_from_the_installed_package(client):
    response = client.get("/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == plotly_js().read_bytes()
    assert b"plotly.js v" in response.content[:400]


def test_catalog_lists_every_download_format(client):
    exports = client.get("/api/v1/catalog").json()["exports"]
    assert [e["name"] for e in exports] == list(EXPORT_HELP)
    assert set(EXPORT_HELP) == set(EXPORTS)
    assert all(e["description"] for e in exports)


def test_manifest_is_404_until_the_run_starts_then_served(client, create, settings):
    experiment = create()
    url = f"{API}/{experiment['id']}/manifest"
    missing = client.get(url)
    assert missing.status_code == 404
    assert "no manifest yet" in missing.json()["detail"]
    root = settings.runs_dir / experiment["id"]
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"seed": 3, "model": "tiny-llama"}))
    assert client.get(url).json() == {"seed": 3, "model": "tiny-llama"}


def test_export_info_is_404_until_exported_then_gives_the_rank_adapters_error(
    client, create, settings
):
    experiment = create()
    url = f"{API}/{experiment['id']}/export"
    missing = client.get(url)
    assert missing.status_code == 404 and "no export yet" in missing.json()["detail"]
    info = {"base_model": "tiny-llama", "adapter_rank": {"rank": 4, "relative_error": 0.02}}
    export = settings.runs_dir / experiment["id"] / "export"
    export.mkdir(parents=True)
    (export / "export.json").write_text(json.dumps(info))
    assert client.get(url).json() == info


def test_report_embeds_the_events_the_modules_and_plotly(client, create, session):
    from backend.db.events import add_event

    experiment = create(name="report </script> me")
    add_event(
        session,
        experiment_id=experiment["id"],
        type="round_started",
        data={"round": 0, "attempt": 0},
    )
    session.commit()
    response = client.get(f"{API}/{experiment['id']}/report")
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    html = response.text
    imports = _import_map(html)
    assert set(imports) == set(MODULES)
    assert all(url.startswith("data:text/javascript;base64,") for url in imports.values())
    data = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)
    assert data, "the run's data is not embedded"
    payload = json.loads(data.group(1))  # the name's "</script>" did not end the element
    assert payload["experiment"]["name"] == "report </script> me"
    assert [e["type"] for e in payload["events"]] == ["round_started"]
    assert payload["events"][0]["data"]["round"] == 0 and payload["events"][0]["data"]["created_at"]
    assert plotly_js().read_text()[:200] in html  # plotly inlined: the file opens offline


def test_report_of_a_missing_experiment_is_404(client):
    assert client.get(f"{API}/nope/report").status_code == 404
