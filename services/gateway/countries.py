"""The offline country database in flat arrays: geoip2fast's data, a tenth of the memory of its own lookup.

geoip2fast's wheel ships the networks of both families (`geoip2fast-ipv6.dat.gz`, no download) and its
`GeoIP2Fast` keeps them as Python lists of ints: some 790,000 networks, 46 MB of objects in a process
that otherwise holds about 150 MB. The same networks here are typed arrays (first address, prefix
length, country index), about 9 MB, looked up as geoip2fast does: the last network starting at or
before the address, if the address is inside it. IPv6 first addresses are split in two 64-bit halves.
"""

from __future__ import annotations

import bisect
import gzip
import pickle
import socket
import struct
from array import array
from importlib import resources

DATA_FILE = "geoip2fast-ipv6.dat.gz"
_V4_END = 2**32
_LOW64 = 2**64 - 1
_FIRST_PUBLIC = 16  # country indexes below this are private or reserved networks (geoip2fast's layout)
_FORMATS = (120, 121)  # geoip2fast's data file versions this reads


class CountryTable:
    def __init__(self, path: str) -> None:
        with gzip.open(path, "rb") as fh:
            version, info, _total, database = pickle.load(fh)  # noqa: S301 - the wheel's own data file
        if version not in _FORMATS or not info.get("country") or info.get("city") or info.get("asn"):
            raise RuntimeError(
                f"{path} is not a geoip2fast country file of format {_FORMATS} (it is {version}); install "
                "the geoip2fast version the lock file names (pip install -r requirements.lock)"
            )
        _index, names, firsts, ids, netlens = database
        self.codes = [name.split(":", 1)[0] if i >= _FIRST_PUBLIC else "" for i, name in enumerate(names)]
        self.v4_first, self.v4_len, self.v4_id = array("I"), array("B"), array("H")
        self.v6_high, self.v6_low, self.v6_len, self.v6_id = array("Q"), array("Q"), array("B"), array("H")
        for chunk_first, chunk_id, chunk_len in zip(firsts, ids, netlens, strict=True):
            for first, code, length in zip(chunk_first, chunk_id, chunk_len, strict=True):
                if first < _V4_END:
                    self.v4_first.append(first)
                    self.v4_len.append(length)
                    self.v4_id.append(code)
                else:
                    self.v6_high.append(first >> 64)
                    self.v6_low.append(first & _LOW64)
                    self.v6_len.append(length)
                    self.v6_id.append(code)
        del database, firsts, ids, netlens

    def __len__(self) -> int:
        return len(self.v4_first) + len(self.v6_high)

    def country(self, ip: str) -> str:
        """The ISO code of the network `ip` is in ('' when private, reserved, not found or malformed)."""
        try:
            value = struct.unpack(">L", socket.inet_aton(ip))[0]
        except OSError:
            try:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
            except (OSError, ValueError):
                return ""
        except ValueError:
            return ""
        if value < _V4_END:
            at = bisect.bisect_right(self.v4_first, value) - 1
            if at < 0 or value > self.v4_first[at] + 2 ** (32 - self.v4_len[at]) - 1:
                return ""
            return self.codes[self.v4_id[at]]
        high, low = value >> 64, value & _LOW64
        at = bisect.bisect_right(self.v6_high, high) - 1
        while at >= 0 and self.v6_high[at] == high and self.v6_low[at] > low:
            at -= 1  # networks sharing the upper half, in order of the lower one
        if at < 0:
            return ""
        first = (self.v6_high[at] << 64) | self.v6_low[at]
        if value > first + 2 ** (128 - self.v6_len[at]) - 1:
            return ""
        return self.codes[self.v6_id[at]]


def load() -> CountryTable:
    return CountryTable(str(resources.files("geoip2fast").joinpath(DATA_FILE)))
