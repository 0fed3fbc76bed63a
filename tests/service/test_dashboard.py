"""service/dashboard.py without a browser: the pages and assets it serves, and that nothing they
load comes from the network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import dashboard

STATIC = Path(dashboard.__file__).with_name("static")


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(dashboard.router)
    return TestClient(app)


@pytest.mark.parametrize(
    ("path", "script"),
    [
        pytest.param("/", "/static/jobs.js", id="jobs"),
        pytest.param("/jobs/7", "/static/job.js", id="job"),
        pytest.param("/jobs/7/compare?a=1&b=2", "/static/compare.js", id="compare"),
    ],
)
def test_pages_are_html_shells_loading_their_script(client: TestClient, path: str, script: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f'src="{script}"' in response.text


def test_every_script_and_style_a_page_loads_is_served(client: TestClient) -> None:
    for page in STATIC.glob("*.html"):
        for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.read_text()):
            response = client.get(ref)
            assert response.status_code == 200, f"{page.name}: {ref}"
            assert response.headers["content-type"].split(";")[0] in {"text/javascript", "text/css"}


def test_js_modules_import_only_served_assets(client: TestClient) -> None:
    for script in STATIC.glob("*.js"):
        for ref in re.findall(r'from "([^"]+)"', script.read_text()):
            assert client.get(ref).status_code == 200, f"{script.name} imports {ref}"


def test_plotly_comes_from_the_installed_package(client: TestClient) -> None:
    response = client.get("/static/plotly.min.js")
    assert response.status_code == 200
    assert "plotly.js v" in response.text[:200]


def test_assets_are_revalidated_not_resent(client: TestClient) -> None:
    first = client.get("/static/plotly.min.js")
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/static/plotly.min.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert client.get("/static/plotly.min.js", headers={"If-None-Match": '"stale"'}).status_code == 200


def test_nothing_is_loaded_from_the_network() -> None:
    for path in [*STATIC.glob("*.html"), *STATIC.glob("*.js"), *STATIC.glob("*.css")]:
        text = path.read_text()
        assert not re.search(r'(?:src|href)="(?:https?:)?//', text), path.name
        assert not re.search(r'(?:import|from)\s*\(?\s*"(?:https?:)?//', text), path.name
        assert "url(http" not in text, path.name


@pytest.mark.parametrize("name", ["nope.js", "..%2Fdashboard.py", "jobs.html", "%2Fetc%2Fpasswd"])
def test_only_listed_assets_are_served(client: TestClient, name: str) -> None:
    assert client.get(f"/static/{name}").status_code == 404
