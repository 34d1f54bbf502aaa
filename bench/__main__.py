"""`make bench`: every benchmark, numbers printed and written to bench/results/*.json.

`python -m bench ingest` (or enrich, servers, aggregator, query, footprint, pipeline) runs one.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from bench.common import RESULTS

BENCHMARKS = ("enrich", "ingest", "servers", "aggregator", "query", "footprint", "pipeline")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name} ==", flush=True)
        module.main()
    print("== goals ==")
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            for line in goal_lines(name, json.loads(path.read_text())):
                print(line)
    return 0


def goal_lines(prefix: str, result: Any) -> list[str]:
    """One line per figure that has a goal in a benchmark's result (each such entry says `met`)."""
    if not isinstance(result, dict):
        return []
    if "met" in result:
        goal = next((v for k, v in result.items() if k.startswith(("goal", "target")) and k != "goal_met"), "?")
        value = result.get("value", next((v for k, v in result.items() if k not in ("met",) and
                                          not k.startswith(("goal", "target")) and isinstance(v, int | float)), "?"))
        return [f"  {'met    ' if result['met'] else 'NOT met'}  {prefix:<58} {value} (goal {goal})"]
    return [line for key, value in result.items() for line in goal_lines(f"{prefix}.{key}", value)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
