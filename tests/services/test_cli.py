"""`analytics` itself: its version, and configuration errors that name the variable to fix."""

from __future__ import annotations

from typer.testing import CliRunner

from libs import __version__
from services.cli import app


def test_version_prints_the_project_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"analytics {__version__}"


def test_a_bad_setting_names_its_environment_variable_and_value() -> None:
    result = CliRunner().invoke(app, ["migrate"], env={"KAFKA_PARTITIONS": "abc"})
    assert result.exit_code == 2
    assert "KAFKA_PARTITIONS='abc'" in result.output and "integer" in result.output, result.output


def test_run_help_says_the_default_ports() -> None:
    from services.runner import ALL_PORT, SERVICES

    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert f"share {ALL_PORT}" in text, text
    for name, spec in SERVICES.items():
        assert f"{name} {spec.port}" in text, (name, text)


def test_status_takes_the_options_its_help_and_the_docs_name() -> None:
    """`--url` and `--group` as README.md and docs/scaling.md spell them (typer 0.27 named a list option
    with a metavar after the metavar: `--URL`, and refused `--url`)."""
    result = CliRunner().invoke(app, ["status", "--url", "http://10.0.0.5:8004", "--group", "aggregator", "--help"],
                                env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for option in ("--kafka", "--url", "--group", "--json"):
        assert f" {option} " in result.output, (option, result.output)
