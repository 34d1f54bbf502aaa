"""`make bench`: every benchmark, numbers printed and written to bench/results/*.json.

`python -m bench ingest` (or servers, aggregator, query, pipeline) runs one.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("ingest", "servers", "aggregator", "query", "pipeline")


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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
