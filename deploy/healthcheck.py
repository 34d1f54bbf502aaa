#!/usr/bin/env python3
"""Container healthcheck: exit 0 when this container's service answers GET /readyz with 200.

The port is HEALTHCHECK_PORT when set, else the first of the services' fixed ports (README's service table)
that answers: one image serves every service, each on its own port. Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORTS = (8001, 8002, 8003, 8004, 8005, 8000)


def ready(port: int, path: str) -> bool | None:
    """True ready, False answering but not ready, None nothing listens there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False
    except (OSError, urllib.error.URLError):
        return None


def main() -> int:
    path = os.environ.get("HEALTHCHECK_PATH", "/readyz")
    ports = [int(os.environ["HEALTHCHECK_PORT"])] if os.environ.get("HEALTHCHECK_PORT") else list(PORTS)
    for port in ports:
        answer = ready(port, path)
        if answer is not None:
            print(f"{path} on port {port}: {'ready' if answer else 'not ready'}")
            return 0 if answer else 1
    print(f"nothing answers {path} on ports {ports}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
