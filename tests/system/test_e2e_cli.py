"""`analytics run` and `analytics infra` started as a user starts them, driven over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e import clean_env, port, running, stop_and_check_nothing_left
from tests.system.slice_http import run_slice

pytestmark = pytest.mark.e2e


def test_run_serves_the_whole_slice_on_one_port_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "d"
    p = port()
    base = f"http://127.0.0.1:{p}"
    log = tmp_path / "run.log"
    with running("run", "--port", str(p), env=clean_env(data), log=log, base=base) as proc:
        engines = [c for c in psutil.Process(proc.pid).children(recursive=True)]
        assert {"postgres", "valkey-server"} <= {c.name() for c in engines}, [c.name() for c in engines]
        assert any("tansu" in c.name() for c in engines)
        for path in ("/healthz", "/readyz", "/metrics", "/docs"):
            assert httpx.get(base + path).status_code == 200, path
        run_slice(base, base, base)
        assert list((data / "mail").glob("*.eml")), "the welcome email did not reach the local inbox"
        assert stop_and_check_nothing_left(proc, signal.SIGINT) == 0
    assert not list((data / "run").glob("*.pid")), "pid files of stopped engines remain"


@pytest.mark.parametrize("clickhouse_url", [None, ""], ids=["unset", "empty"])
def test_query_without_aggregator_and_without_clickhouse_url_is_a_clear_error(tmp_path: Path, clickhouse_url: str | None) -> None:
    env = clean_env(tmp_path / "d")
    if clickhouse_url is not None:
        env["CLICKHOUSE_URL"] = clickhouse_url  # `export CLICKHOUSE_URL=`: unset too, not a server at ""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "analytics"), "run", "--services", "query", "--port", str(port())],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "chDB" in proc.stderr and "CLICKHOUSE_URL" in proc.stderr


def test_a_second_run_on_the_same_data_dir_is_refused_with_advice(tmp_path: Path) -> None:
    data = tmp_path / "d"
    p = port()
    with running("run", "--port", str(p), env=clean_env(data), log=tmp_path / "1.log", base=f"http://127.0.0.1:{p}"):
        second = subprocess.run(
            [str(Path(sys.executable).parent / "analytics"), "run", "--services", "gateway,auth",
             "--port", str(port())],
            env=clean_env(data), capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 2
        assert "already run by pid" in second.stderr and "export" in second.stderr
