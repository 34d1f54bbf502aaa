"""The gateway reads User-Agents with the fastest parser ua-parser has (its Rust resolver), and reads
them the same as the pure-Python one did: dashboards' browser, OS and device figures do not move."""

from __future__ import annotations

import ua_parser

from bench.traffic import user_agents
from services.gateway import enrich


def test_the_gateway_parses_user_agents_with_the_rust_resolver() -> None:
    # ua-parser picks its best resolver at import: the `regex` extra (ua-parser-rs) must be installed,
    # else every new User-Agent costs about 0.5 ms of the gateway's CPU instead of about 15 µs.
    assert ua_parser.RegexResolver is not None, "install ua-parser[regex] (ua-parser-rs)"
    assert ua_parser.BestAvailableResolver is ua_parser.RegexResolver
    assert enrich.user_agent_facts("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0") == (
        "Firefox", "Linux", "desktop")


def test_the_rust_resolver_reads_a_sites_agents_as_the_python_one_does() -> None:
    matchers = ua_parser.load_builtins()
    rust = ua_parser.Parser(ua_parser.RegexResolver(matchers))  # type: ignore[misc]
    python = ua_parser.Parser(ua_parser.BasicResolver(matchers))
    agents = [*user_agents(300), "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
    for agent in agents:
        assert rust.parse(agent) == python.parse(agent), agent
    enrich.user_agent_facts.cache_clear()
    facts = {agent: enrich.user_agent_facts(agent) for agent in agents}
    assert facts[agents[-1]] == ("Googlebot", "Other", "bot")
    kinds = {kind for _, _, kind in facts.values()}
    assert {"desktop", "mobile", "tablet"} <= kinds
    browsers = {browser for browser, _, _ in facts.values()}
    assert {"Chrome", "Firefox", "Mobile Safari", "Edge"} <= browsers
