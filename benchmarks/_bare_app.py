"""The baseline of ``overhead.py``: a bare Starlette app answering one route with fixed bytes.

It returns exactly the body hfserve's ``GET /v1/models`` returned (passed in
``BARE_APP_BODY``), so the two servers differ only in the stack in front of the route.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_BODY = os.environ.get("BARE_APP_BODY", '{"object":"list","data":[]}').encode()


async def models(request: Request) -> Response:
    """The fixed body, as JSON."""
    return Response(_BODY, media_type="application/json")


app = Starlette(routes=[Route("/v1/models", models, methods=["GET"])])
