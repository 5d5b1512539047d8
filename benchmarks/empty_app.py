"""An empty FastAPI endpoint served like the relay (uvicorn, uvloop, httptools): the floor a
1-record relay request is compared with.

``python -m benchmarks.empty_app PORT`` serves ``POST /empty`` (answers ``{}``) on 127.0.0.1.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

__all__ = ["main", "make_app"]


def make_app() -> FastAPI:
    """The app: one route that reads nothing and writes nothing (the HTTP stack's own cost)."""
    app = FastAPI()

    @app.post("/empty")
    async def empty() -> Response:
        return Response(b"{}", media_type="application/json")

    return app


def main(argv: list[str]) -> int:
    """Serve on 127.0.0.1:``argv[0]`` until killed."""
    uvicorn.run(
        make_app(),
        host="127.0.0.1",
        port=int(argv[0]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
