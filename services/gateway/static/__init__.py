"""The tracking snippet sites embed: `GET /js/script.js` (see script.js for its options and API)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from fastapi import APIRouter, Request, Response

SCRIPT = (Path(__file__).parent / "script.js").read_bytes()
SCRIPT_GZ = gzip.compress(SCRIPT, 9, mtime=0)
ETAG = 'W/"' + hashlib.sha256(SCRIPT).hexdigest()[:20] + '"'  # weak: one validator for both encodings


router = APIRouter(tags=["snippet"])


# GET and HEAD as two operations: one route would give both the same operationId.
@router.head("/js/script.js", operation_id="headSnippet", summary="The tracking snippet's headers (ETag)",
             response_class=Response)
@router.get("/js/script.js", operation_id="getSnippet", summary="The tracking snippet for websites",
            response_class=Response)
async def script(request: Request) -> Response:
    headers = {
        "Cache-Control": "public, max-age=3600, stale-while-revalidate=86400",
        "ETag": ETAG,
        "Vary": "Accept-Encoding",
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if ETAG.removeprefix("W/") in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = SCRIPT
    if "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = SCRIPT_GZ, "gzip"
    return Response(body, media_type="application/javascript; charset=utf-8", headers=headers)

