"""The country database in flat arrays (services/gateway/countries.py) answers as geoip2fast's own
lookup does, on the same data file, in a fraction of its memory."""

from __future__ import annotations

import ipaddress
import random

from geoip2fast import GeoIP2Fast

from services.gateway.countries import DATA_FILE, load
from services.gateway.enrich import country_of


def test_the_country_table_answers_as_geoip2fast_does() -> None:
    table = load()
    reference = GeoIP2Fast(geoip2fast_data_file=DATA_FILE)
    rnd = random.Random(21)
    addresses = [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(20_000)]
    addresses += [str(ipaddress.IPv6Address((0x2000 + rnd.getrandbits(12)) << 112 | rnd.getrandbits(112)))
                  for _ in range(20_000)]
    addresses += ["8.8.8.8", "2a00:1450:4001:80b::200e", "10.0.0.1", "127.0.0.1", "::1", "fe80::1", "2001:db8::1",
                  "255.255.255.255", "0.0.0.0"]

    def iso(code: str) -> str:  # as enrich.country_of keeps it
        return code if code and len(code) == 2 and code.isalpha() else ""

    differing = [(ip, table.country(ip), reference.lookup(ip).country_code) for ip in addresses
                 if iso(table.country(ip)) != iso(reference.lookup(ip).country_code)]
    assert differing == []
    assert sum(1 for ip in addresses if table.country(ip)) > 10_000  # most public addresses have a country


def test_the_country_table_is_small() -> None:
    table = load()
    arrays = [table.v4_first, table.v4_len, table.v4_id, table.v6_high, table.v6_low, table.v6_len, table.v6_id]
    held = sum(len(a) * a.itemsize for a in arrays)
    assert len(table) > 700_000
    assert held < 12 * 2**20  # geoip2fast's own lists of ints hold the same networks in some 46 MB


def test_country_of_reads_public_addresses_of_both_families_and_not_the_rest() -> None:
    assert country_of("8.8.8.8") == "US"
    assert country_of("2a00:1450:4001:80b::200e") == "DE"
    assert [country_of(ip) for ip in ("10.1.2.3", "192.168.0.1", "::1", "", "not an address", "999.1.1.1")] == [""] * 6
