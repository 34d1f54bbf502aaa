"""Realistic traffic for the benchmarks: distinct User-Agent strings, visitor IPs and event names.

Deterministic (the same lists on every run), shaped like a site's traffic: mostly Chrome on Windows and
Android, then Safari on iOS and macOS, Edge, Firefox, Samsung Internet, in-app and server clients, and
a few crawlers, each across the versions and devices that circulate at once.
"""

from __future__ import annotations

import ipaddress
import random

EVENT_NAMES = (
    "page_view", "click", "signup_click", "signup", "login", "add_to_cart", "remove_from_cart", "checkout",
    "purchase", "search", "video_play", "video_pause", "share", "download", "form_submit", "scroll_depth",
    "newsletter_subscribe", "outbound_link", "error", "feature_used",
)
PATHS = ("/", "/pricing", "/blog", "/blog/launch", "/blog/scaling", "/docs", "/docs/start", "/docs/api",
         "/signup", "/login", "/about", "/contact", "/p/1", "/p/2", "/p/3", "/cart", "/checkout", "/search")
REFERRERS = ("", "", "", "https://www.google.com/", "https://www.google.com/", "https://news.ycombinator.com/",
             "https://twitter.com/", "https://www.bing.com/", "https://duckduckgo.com/", "https://github.com/")

_WINDOWS = ("Windows NT 10.0; Win64; x64", "Windows NT 10.0; WOW64", "Windows NT 6.1; Win64; x64")
_MACS = ("Macintosh; Intel Mac OS X 10_15_7", "Macintosh; Intel Mac OS X 14_5", "Macintosh; Intel Mac OS X 13_6_7")
_LINUX = ("X11; Linux x86_64", "X11; Ubuntu; Linux x86_64", "X11; Fedora; Linux x86_64")
_ANDROID_DEVICES = ("SM-S918B", "SM-A546B", "Pixel 8", "Pixel 7a", "M2101K6G", "CPH2449", "moto g 5G",
                    "SM-T870", "22101316G", "RMX3771")
_IPHONE_OS = ("17_5_1", "17_4", "16_7_8", "18_0", "18_1", "15_8_2")
_BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
)
_SERVERS = ("python-requests/2.{}.0", "curl/8.{}.0", "Go-http-client/1.1", "okhttp/4.{}.0", "axios/1.{}.2",
            "analytics-node/6.{}.0")


def user_agents(n: int = 1000, seed: int = 21) -> list[str]:
    """`n` distinct User-Agent strings in a realistic mix (the first ones the most common, as on a site)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    makers = ((_chrome_desktop, 30), (_chrome_android, 22), (_safari_ios, 16), (_safari_mac, 6), (_edge, 8),
              (_firefox, 8), (_samsung, 4), (_in_app, 3), (_server, 2), (_bot, 1))
    choices = [m for m, weight in makers for _ in range(weight)]
    while len(seen) < n:
        seen.setdefault(rng.choice(choices)(rng), None)
    return list(seen)


def visitor_ips(n: int = 10_000, seed: int = 21, ipv6_share: float = 0.3) -> list[str]:
    """`n` distinct public client addresses, about `ipv6_share` of them IPv6."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        if rng.random() < ipv6_share:
            prefix = rng.choice((0x2a02, 0x2600, 0x2804, 0x2405, 0x2001_4860 >> 16))  # allocated to ISPs
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                prefix << 112 | rng.getrandbits(112))
        else:
            address = ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24))
        if address.is_global:
            seen.setdefault(str(address), None)
    return list(seen)


def _chrome_version(rng: random.Random) -> str:
    return f"{rng.randint(118, 131)}.0.{rng.randint(5000, 6800)}.{rng.randint(0, 200)}"


def _chrome_desktop(rng: random.Random) -> str:
    platform = rng.choice(_WINDOWS + _MACS + _LINUX)
    return (f"Mozilla/5.0 ({platform}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{_chrome_version(rng)} "
            "Safari/537.36")


def _chrome_android(rng: random.Random) -> str:
    device = rng.choice(_ANDROID_DEVICES)
    mobile = "" if device.startswith("SM-T") else " Mobile"
    return (f"Mozilla/5.0 (Linux; Android {rng.randint(10, 15)}; {device}) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{_chrome_version(rng)}{mobile} Safari/537.36")


def _safari_ios(rng: random.Random) -> str:
    os_version = rng.choice(_IPHONE_OS)
    device = rng.choice(("iPhone; CPU iPhone OS", "iPhone; CPU iPhone OS", "iPad; CPU OS"))
    major = os_version.split("_")[0]
    return (f"Mozilla/5.0 ({device} {os_version} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            f"Version/{major}.{rng.randint(0, 6)} Mobile/15E{rng.randint(100, 350)} Safari/604.1")


def _safari_mac(rng: random.Random) -> str:
    return (f"Mozilla/5.0 ({rng.choice(_MACS)}) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            f"Version/{rng.randint(15, 18)}.{rng.randint(0, 6)} Safari/605.1.15")


def _edge(rng: random.Random) -> str:
    version = _chrome_version(rng)
    return (f"Mozilla/5.0 ({rng.choice(_WINDOWS)}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{version} "
            f"Safari/537.36 Edg/{version.split('.')[0]}.0.{rng.randint(2000, 2900)}.{rng.randint(0, 120)}")


def _firefox(rng: random.Random) -> str:
    version = rng.randint(115, 133)
    platform = rng.choice(_WINDOWS + _MACS + _LINUX).replace("Intel Mac OS X 14_5", "Intel Mac OS X 10.15")
    return f"Mozilla/5.0 ({platform}; rv:{version}.0) Gecko/20100101 Firefox/{version}.0"


def _samsung(rng: random.Random) -> str:
    return (f"Mozilla/5.0 (Linux; Android {rng.randint(11, 14)}; {rng.choice(_ANDROID_DEVICES)}) AppleWebKit/537.36 "
            f"(KHTML, like Gecko) SamsungBrowser/{rng.randint(20, 26)}.0 Chrome/{_chrome_version(rng)} "
            "Mobile Safari/537.36")


def _in_app(rng: random.Random) -> str:
    os_version = rng.choice(_IPHONE_OS)
    app = rng.choice((f"Instagram {rng.randint(300, 350)}.0.0.{rng.randint(10, 40)}.{rng.randint(100, 120)}",
                      f"[FBAN/FBIOS;FBAV/{rng.randint(440, 480)}.0.0.{rng.randint(10, 60)}.{rng.randint(100, 120)}]"))
    return (f"Mozilla/5.0 (iPhone; CPU iPhone OS {os_version} like Mac OS X) AppleWebKit/605.1.15 "
            f"(KHTML, like Gecko) Mobile/15E148 {app}")


def _server(rng: random.Random) -> str:
    return rng.choice(_SERVERS).format(rng.randint(1, 32))


def _bot(rng: random.Random) -> str:
    return rng.choice(_BOTS)
