"""The import rule, enforced: a service package imports only libs/ and itself; libs/ never imports a
service; the launcher (services.cli, services.runner) is the only place services are put together.
The contracts live in pyproject.toml ([tool.importlinter]); this runs import-linter on them, as
`lint-imports` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = (
    "import sys\n"
    "try:\n"
    "    from importlinter.cli import lint_imports\n"
    "except ImportError:\n"
    "    sys.exit(\"import-linter is missing: install the test tools (pip install -e '.[test]')\")\n"
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))\n"
)


def test_services_import_only_libs_and_themselves() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LINT, str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, f"an import breaks the architecture's contracts:\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout
