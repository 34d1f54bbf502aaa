"""Varied, realistic ingest traffic for wrk: distinct User-Agents, visitor addresses, event names and pages.

Everything is generated deterministically (a seeded `random.Random`), written into a Lua script as
tables, and the script builds its requests once in `init()`, so `request()` only picks one from a
table: wrk stays cheap and the server is what is measured.
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Iterable

EVENT_NAMES = (
    "page_view", "product_view", "add_to_cart", "remove_from_cart", "checkout_start", "purchase", "search",
    "signup_click", "signup_complete", "login", "logout", "newsletter_subscribe", "video_play", "video_complete",
    "share", "file_download", "outbound_click", "form_submit", "wishlist_add", "error_shown",
)
# page views are most of a site's events
EVENT_WEIGHTS = (40, 12, 6, 2, 3, 2, 6, 3, 1, 3, 1, 1, 3, 1, 1, 2, 3, 2, 1, 1)
SCREENS = ("1920x1080", "1366x768", "1536x864", "2560x1440", "390x844", "414x896", "360x800", "1280x720", "820x1180")
SITE = "https://shop.example"


def user_agents(n: int = 1000, seed: int = 21) -> list[str]:
    """`n` distinct User-Agent strings as browsers, phones and crawlers send them, in a realistic mix."""
    rng = random.Random(seed)
    windows = ("Windows NT 10.0; Win64; x64", "Windows NT 10.0; WOW64", "Windows NT 6.1; Win64; x64")
    macs = ("10_15_7", "10_15_6", "11_7_10", "12_7_4", "13_6_7", "14_5")
    linuxes = ("X11; Linux x86_64", "X11; Ubuntu; Linux x86_64", "X11; Fedora; Linux x86_64")
    androids = (("10", "SM-G973F"), ("11", "Pixel 4a"), ("12", "SM-A525F"), ("13", "Pixel 7"), ("13", "SM-S911B"),
                ("14", "Pixel 8 Pro"), ("14", "SM-A546B"), ("12", "M2101K6G"), ("13", "CPH2451"), ("11", "moto g(30)"))
    ios = ("15_8", "16_6", "16_7_8", "17_0", "17_4_1", "17_5", "17_6_1", "18_0", "18_1")
    bots = (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
        "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Twitterbot/1.0",
        "Mozilla/5.0 (compatible; Applebot/0.1; +http://www.apple.com/go/applebot)",
    )

    def chrome() -> str:
        return f"{rng.randint(109, 131)}.0.{rng.randint(5400, 6778)}.{rng.randint(0, 250)}"

    def one() -> str:
        family = rng.choices(
            ("chrome-win", "chrome-mac", "chrome-linux", "firefox", "safari", "edge", "ios", "ipad", "android",
             "samsung", "bot", "googlebot-smartphone"),
            weights=(22, 8, 3, 8, 6, 7, 18, 3, 17, 3, 3, 2),
        )[0]
        if family == "chrome-win":
            return (f"Mozilla/5.0 ({rng.choice(windows)}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome()} "
                    "Safari/537.36")
        if family == "chrome-mac":
            return (f"Mozilla/5.0 (Macintosh; Intel Mac OS X {rng.choice(macs)}) AppleWebKit/537.36 (KHTML, like "
                    f"Gecko) Chrome/{chrome()} Safari/537.36")
        if family == "chrome-linux":
            return f"Mozilla/5.0 ({rng.choice(linuxes)}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome()} Safari/537.36"
        if family == "firefox":
            v = rng.randint(102, 133)
            system = rng.choice((*windows, *linuxes, f"Macintosh; Intel Mac OS X {rng.choice(('10.15', '13.6', '14.5'))}"))
            return f"Mozilla/5.0 ({system}; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"
        if family == "safari":
            return (f"Mozilla/5.0 (Macintosh; Intel Mac OS X {rng.choice(macs)}) AppleWebKit/605.1.15 (KHTML, like "
                    f"Gecko) Version/{rng.randint(15, 18)}.{rng.randint(0, 6)} Safari/605.1.15")
        if family == "edge":
            c = chrome()
            return (f"Mozilla/5.0 ({rng.choice(windows)}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{c} "
                    f"Safari/537.36 Edg/{c.split('.')[0]}.0.{rng.randint(2000, 2900)}.{rng.randint(0, 120)}")
        if family in ("ios", "ipad"):
            version = rng.choice(ios)
            device = "iPhone; CPU iPhone OS" if family == "ios" else "iPad; CPU OS"
            return (f"Mozilla/5.0 ({device} {version} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                    f"Version/{version.split('_')[0]}.{version.split('_')[1]} Mobile/15E148 Safari/604.1")
        if family == "android":
            release, model = rng.choice(androids)
            return (f"Mozilla/5.0 (Linux; Android {release}; {model}) AppleWebKit/537.36 (KHTML, like Gecko) "
                    f"Chrome/{chrome()} Mobile Safari/537.36")
        if family == "samsung":
            release, model = rng.choice(androids[:5])
            return (f"Mozilla/5.0 (Linux; Android {release}; {model}) AppleWebKit/537.36 (KHTML, like Gecko) "
                    f"SamsungBrowser/{rng.randint(20, 26)}.0 Chrome/{chrome()} Mobile Safari/537.36")
        if family == "googlebot-smartphone":
            return (f"Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
                    f"Gecko) Chrome/{chrome()} Mobile Safari/537.36 (compatible; Googlebot/2.1; "
                    "+http://www.google.com/bot.html)")
        return rng.choice(bots)

    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(one())
    return list(seen)


def visitor_ips(n: int = 10_000, seed: int = 21, ipv6_share: float = 0.3) -> list[str]:
    """`n` distinct public-looking client addresses, IPv4 and IPv6 mixed."""
    rng = random.Random(seed)
    v6_prefixes = (0x2001_0DB8, 0x2A02_8108, 0x2600_1700, 0x2A01_0E0A, 0x2405_0200, 0x2804_0D40)
    seen: dict[str, None] = {}
    while len(seen) < n:
        if rng.random() < ipv6_share:
            address = (rng.choice(v6_prefixes) << 96) | rng.getrandbits(96)
            seen.setdefault(str(ipaddress.IPv6Address(address)))
        else:
            v4 = ipaddress.IPv4Address(rng.getrandbits(32))
            if v4.is_global and not v4.is_multicast:
                seen.setdefault(str(v4))
    return list(seen)


def pages(n: int = 300, seed: int = 21) -> list[str]:
    """Site paths: home, listings, products, blog posts, docs, some with UTM tags or a search query."""
    rng = random.Random(seed)
    out = ["/", "/pricing", "/about", "/contact", "/cart", "/checkout", "/signup", "/login"]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.4:
            path = f"/p/{rng.randint(1, 5000)}-{rng.choice(('shoe', 'jacket', 'lamp', 'mug', 'desk', 'sofa'))}"
        elif kind < 0.6:
            path = f"/blog/{rng.randint(2019, 2026)}/{rng.choice(('spring', 'guide', 'review', 'news'))}-{rng.randint(1, 99)}"
        elif kind < 0.75:
            path = f"/c/{rng.choice(('men', 'women', 'home', 'garden', 'sale'))}?page={rng.randint(1, 9)}"
        elif kind < 0.85:
            path = f"/docs/{rng.choice(('start', 'api', 'billing'))}/{rng.randint(1, 40)}"
        else:
            path = f"/search?q={rng.choice(('red+shoes', 'desk+lamp', 'gift', 'linen'))}"
        if rng.random() < 0.2:
            path += ("&" if "?" in path else "?") + (
                f"utm_source={rng.choice(('newsletter', 'google', 'facebook'))}&utm_medium={rng.choice(('email', 'cpc'))}"
                f"&utm_campaign=c{rng.randint(1, 12)}")
        if path not in out:
            out.append(path)
    return out


def referrers() -> list[str]:
    return ["", "", "", "https://www.google.com/", "https://www.bing.com/", "https://news.ycombinator.com/",
            "https://t.co/abc", "https://www.facebook.com/", "https://duckduckgo.com/", "https://shop.example/"]


def _lua_list(name: str, values: Iterable[str]) -> str:
    return f"local {name} = {{" + ",".join(json.dumps(v) for v in values) + "}\n"


def lua_script(
    kind: str, auth_header: str, auth_value: str, *, requests: int = 20_000, batch_events: int = 50,
    seed: int = 21,
) -> str:
    """A wrk script sending `POST /api/analytics/collect` single events (`kind="single"`) or
    `POST /v1/batch` Segment batches of `batch_events` (`kind="batch"`), varied per request: the
    visitor (X-Forwarded-For) keeps its User-Agent across its requests, as a real one does. Every
    event sent carries an id of its own (`event_id`, Segment's `messageId`), as SDKs send them: an
    event answered 503 and stored all the same is stored once however often a client retries it."""
    if kind not in ("single", "batch"):
        raise ValueError(f"kind is single or batch, not {kind!r}")
    rng = random.Random(seed)
    names = rng.choices(EVENT_NAMES, weights=EVENT_WEIGHTS, k=997)  # a weighted pool to pick from uniformly
    tables = (
        _lua_list("UAS", user_agents()) + _lua_list("IPS", visitor_ips()) + _lua_list("NAMES", names)
        + _lua_list("PAGES", pages()) + _lua_list("REFS", referrers()) + _lua_list("SCREENS", SCREENS)
    )
    return tables + f"""
local AUTH_NAME, AUTH_VALUE = {json.dumps(auth_header)}, {json.dumps(auth_value)}
local KIND, N, K = {json.dumps(kind)}, {requests if kind == "single" else max(1, requests // batch_events)}, {batch_events}
local reqs = {{}}
local ID = "@@@@@@@@@@@@@@@@"  -- 16 characters, replaced by a unique id in every request
local prefix, sent = string.format("%08x", os.time() % 4294967296), 0

local function pick(t) return t[math.random(#t)] end

local function visitor()
  local v = math.random(#IPS)
  return v, IPS[v], UAS[(v * 7919) % #UAS + 1]
end

local function single_body(v, ua)
  local ref = pick(REFS)
  return '{{"event_id":"' .. ID .. '","event":"' .. pick(NAMES) .. '","url":"{SITE}' .. pick(PAGES) .. '"' ..
    (ref ~= "" and (',"referrer":"' .. ref .. '"') or "") ..
    ',"userId":"v' .. v .. '","sessionId":"s' .. v .. '-' .. math.random(3) .. '"' ..
    ',"metadata":{{"screenSize":"' .. pick(SCREENS) .. '"}}}}'
end

local function batch_body(v, ua)
  local calls = {{}}
  for j = 1, K do
    local name = pick(NAMES)
    local page = pick(PAGES)
    if name == "page_view" then
      calls[j] = '{{"type":"page","messageId":"' .. ID .. '-' .. j .. '","name":"' .. page ..
        '","userId":"v' .. v .. '","properties":{{"url":"{SITE}' ..
        page .. '","path":"' .. page:gsub("%?.*", "") .. '"}},"context":{{"userAgent":"' .. ua .. '"}}}}'
    else
      calls[j] = '{{"type":"track","messageId":"' .. ID .. '-' .. j .. '","event":"' .. name .. '","userId":"v' .. v ..
        '","properties":{{"amount":' .. math.random(1, 500) .. ',"page":"' .. page ..
        '"}},"context":{{"userAgent":"' .. ua .. '","page":{{"url":"{SITE}' .. page .. '"}}}}}}'
    end
  end
  return '{{"batch":[' .. table.concat(calls, ",") .. ']}}'
end

function init(args)
  math.randomseed({seed})
  for i = 1, N do
    local v, ip, ua = visitor()
    local headers = {{["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json",
                     ["User-Agent"] = ua, ["X-Forwarded-For"] = ip, [AUTH_NAME] = AUTH_VALUE}}
    if KIND == "single" then
      reqs[i] = wrk.format("POST", "/api/analytics/collect", headers, single_body(v, ua))
    else
      reqs[i] = wrk.format("POST", "/v1/batch", headers, batch_body(v, ua))
    end
  end
end

function request()
  sent = sent + 1
  local id = prefix .. string.format("%08x", sent)
  return (string.gsub(reqs[math.random(N)], ID, id))
end
"""
