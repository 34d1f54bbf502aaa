"""The README's first minutes, pasted as a newcomer pastes them, against `analytics run` as started."""

from __future__ import annotations

import re
import signal
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from tests.e2e import ROOT, clean_env, port, running, stop_and_check_nothing_left

pytestmark = pytest.mark.e2e


def readme_block(heading: str) -> str:
    """The first ```sh block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading):]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, f"no sh block after {heading!r}"
    return match.group(1)


def test_try_it_with_curl_block_works_pasted_as_one_piece(tmp_path: Path) -> None:
    block = readme_block("### Try it with curl")
    assert block.startswith("B=http://127.0.0.1:8000\n")
    p = port()
    # Where a newcomer runs `make run`: the default data dir (.data) under the current directory.
    env = clean_env(tmp_path / "unused")
    env.pop("ANALYTICS_DATA_DIR")
    base = f"http://127.0.0.1:{p}"
    with running("run", "--port", str(p), env=env, log=tmp_path / "run.log", base=base, cwd=tmp_path) as proc:
        # The only edit: the port this test serves on instead of 8000.
        script = block.replace("B=http://127.0.0.1:8000", f"B={base}", 1)
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert '"count":1' in out.stdout, out.stdout + out.stderr
        assert '"deviceData":{"mobile":1}' in out.stdout, out.stdout
        assert "error" not in out.stderr.lower(), out.stderr
        listed = out.stdout.split()
        assert any(name.endswith(".eml") for name in listed), out.stdout
        mails = [message_from_bytes(f.read_bytes(), policy=policy.default) for f in (tmp_path / ".data" / "mail").glob("*.eml")]
        welcome = [m for m in mails if "welcome" in str(m["subject"]).lower()]
        assert welcome, [str(m["subject"]) for m in mails]
        body = welcome[0].get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert f"{base}/dashboard" in text, text
        assert stop_and_check_nothing_left(proc, signal.SIGINT) == 0
