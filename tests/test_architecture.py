"""The import rule, enforced: a service package imports only libs/ and itself; libs/ never imports a
service; the launcher (services.cli, services.runner) is the only place services are put together.
The contracts live in pyproject.toml ([tool.importlinter]); this runs `lint-imports` on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_services_import_only_libs_and_themselves() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, f"an import breaks the architecture's contracts:\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout
