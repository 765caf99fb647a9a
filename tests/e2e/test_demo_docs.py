"""docs/api.md and the README checked against the managers' OpenAPI documents and node routes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from demo import apidoc

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_api_reference_matches_the_openapi_documents_and_node_routes(capsys):
    assert apidoc.main(["--check"]) == 0, capsys.readouterr().err


def test_every_path_the_readme_shows_exists():
    docs = apidoc.openapi_documents()
    known = [p for d in docs.values() for p in d["paths"]]
    known += [p for _, p in apidoc.node_routes()]
    patterns = [
        re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/?]+", re.escape(p)) + "$") for p in known
    ]
    readme = (REPO / "README.md").read_text()
    used = set(re.findall(r"(?:\$[RC]|http://node|:10099|:10110)(/[A-Za-z0-9_./{}-]*)", readme))
    assert used, "the README shows API calls"
    for path in sorted(used):
        assert any(p.match(path) for p in patterns), f"README path {path} is not an endpoint"
