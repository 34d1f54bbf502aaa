"""Enrichment benchmark: the gateway's CPU per event for what it adds to an event (browser, OS, device
type, client kind, bot flag from the User-Agent; country from the IP; URL and referrer facts; time),
with a realistic traffic mix (bench/traffic.py: 1,000 User-Agents, 10,000 IPs, 20 event names).

- cold: every User-Agent and IP seen for the first time (the gateway's and ua-parser's caches empty);
- warm: the same events again (what a site's repeat visitors cost).
The User-Agent parser alone is timed with each resolver ua-parser has here, uncached, in the same run:
the pure-Python one (`basic`) is the baseline, the one the gateway uses (`ua_parser.BestAvailableResolver`,
the Rust `regex` resolver from the `ua-parser[regex]` extra) must be the fastest.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import ua_parser

from bench.common import write_result
from bench.traffic import EVENT_NAMES, pages, referrers, user_agents, visitor_ips
from libs.apikeys import KeyRecord
from services.gateway import enrich
from services.gateway.service import RequestFacts, from_collect

EVENTS = int(os.environ.get("BENCH_ENRICH_EVENTS", "20000"))
ROUNDS = 3
PARSER_START_MS: list[float] = []
GOAL_WARM_US = 20.0  # µs per event with warm caches: 1 % of a core at 500 events/s


def _events(n: int) -> list[tuple[dict[str, Any], str, str]]:
    """(event, user agent, ip): each visitor keeps one browser and address, popular agents come often."""
    rng = random.Random(7)
    agents, ips = user_agents(), visitor_ips()
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(agents))]  # a long tail, as on a site
    visitors = [(rng.choices(agents, weights)[0], ip) for ip in ips]
    paths, sources = pages(), referrers()
    out = []
    for i in range(n):
        agent, ip = visitors[i % len(visitors)] if i < len(visitors) else rng.choice(visitors)
        path = rng.choice(paths)
        out.append(({"event": rng.choice(EVENT_NAMES), "url": f"https://shop.example{path}",
                     "referrer": rng.choice(sources) or None, "userId": f"u{i % 5000}",
                     "metadata": {"screenSize": "1920x1080"}}, agent, ip))
    return out


def _clear_caches() -> None:
    for cached in (enrich.user_agent_facts, enrich.client_kind, enrich.ua_profile, enrich.country_of,
                   enrich.request_template, enrich.referrer_host, enrich._url_facts):
        cached.cache_clear()
    # The default parser is built again (its cache empty) before the timed events: building it is a
    # start-up cost (`parser_start_ms`), not a per-event one.
    vars(ua_parser).pop("parser", None)
    start = time.perf_counter()
    ua_parser.parser  # noqa: B018 - builds it
    PARSER_START_MS.append((time.perf_counter() - start) * 1000)


def _enrich_all(events: list[tuple[dict[str, Any], str, str]], record: KeyRecord) -> float:
    """µs per event for the gateway's enrichment of `events`."""
    received = datetime.now(UTC)
    start = time.perf_counter()
    for event, agent, ip in events:
        facts = RequestFacts(record, received, agent, ip)
        enrich.finalize(from_collect(event, facts), anonymize=True)  # type: ignore[arg-type]
    return (time.perf_counter() - start) / len(events) * 1e6


def _parser_us(resolver: ua_parser.Resolver, agents: list[str]) -> float:
    parser = ua_parser.Parser(resolver)
    start = time.perf_counter()
    for agent in agents:
        parser.parse(agent)
    return (time.perf_counter() - start) / len(agents) * 1e6


def main() -> dict[str, Any]:
    events = _events(EVENTS)
    record = KeyRecord(key_id="bench", app_id="00000000-0000-0000-0000-000000000001", owner_id="bench",
                       kind="write", key_hash="bench", prefix="pk_bench", created_at=datetime.now(UTC),
                       expires_at=None, revoked_at=None, version=1)
    agents = user_agents()
    enrich.geoip()  # the IP database loads once per process, before the first event
    print(f"enrichment: {EVENTS:,} events, {len(agents):,} user agents, {len(visitor_ips()):,} IPs, "
          f"{len(EVENT_NAMES)} event names; {ROUNDS} rounds", flush=True)
    cold, warm = [], []
    for _ in range(ROUNDS):
        _clear_caches()
        cold.append(_enrich_all(events, record))
        warm.append(_enrich_all(events, record))
    resolvers: dict[str, float] = {}
    matchers = ua_parser.load_builtins()
    candidates = {"basic (pure Python)": ua_parser.BasicResolver, "regex (Rust, ua-parser-rs)": ua_parser.RegexResolver,
                  "re2 (google-re2)": ua_parser.Re2Resolver}
    for name, ctor in candidates.items():
        if ctor is not None:
            resolvers[name] = round(min(_parser_us(ctor(matchers), agents) for _ in range(ROUNDS)), 1)
    in_use = {ua_parser.BasicResolver: "basic (pure Python)", ua_parser.RegexResolver: "regex (Rust, ua-parser-rs)",
              ua_parser.Re2Resolver: "re2 (google-re2)"}[ua_parser.BestAvailableResolver]
    fastest = min(resolvers, key=resolvers.__getitem__)
    cold_us, warm_us = statistics.median(cold), statistics.median(warm)
    for name, us in resolvers.items():
        print(f"  user agent parse, uncached, {name:<28} {us:8.1f} µs"
              + ("   <- the gateway's" if name == in_use else ""), flush=True)
    print(f"  enrichment per event, cold caches            {cold_us:8.1f} µs (every agent and IP new)")
    print(f"  enrichment per event, warm caches            {warm_us:8.1f} µs (goal <= {GOAL_WARM_US:.0f}: "
          f"{'met' if warm_us <= GOAL_WARM_US else 'NOT met'})")
    print(f"  the gateway uses the fastest parser here: {'yes' if in_use == fastest else 'NO'} ({in_use})")
    baseline = resolvers["basic (pure Python)"]
    result = {
        "events": EVENTS, "user_agents": len(agents), "rounds": ROUNDS,
        "per_event_us": {"cold": round(cold_us, 1), "warm": round(warm_us, 1),
                         "cold_rounds": [round(x, 1) for x in cold], "warm_rounds": [round(x, 1) for x in warm]},
        "user_agent_parse_us_uncached": resolvers,
        "parser_start_ms": round(statistics.median(PARSER_START_MS), 1),
        "parser_in_use": in_use, "fastest_parser": fastest,
        "speedup_vs_pure_python": round(baseline / resolvers[in_use], 1),
        "goals": {"warm_us_per_event": {"value": round(warm_us, 1), "goal": GOAL_WARM_US,
                                        "met": warm_us <= GOAL_WARM_US},
                  "fastest_parser_in_use": {"value": in_use, "goal": fastest, "met": in_use == fastest}},
    }
    write_result("enrich", result)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
