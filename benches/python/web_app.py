"""The web app of the web deployment benchmark (``web_deploy.py``): what a
user writes to hand work from a FastAPI endpoint to ferroq workers.

* ``POST /jobs`` with ``{"n": 123}`` sends ``double(n)`` to the store named
  by ``FERROQ_WEB_URL`` and answers ``{"id": <task id>}`` once the task is
  durable (a plain ``def`` endpoint: FastAPI runs it on its thread pool);
* ``POST /jobs-async``: the same from an ``async def`` endpoint, with
  ``await double.asend(n)``;
* ``POST /inline``: the work done in the request, no queue (the reference);
* ``GET /health``: the answering process's pid, for the driver to see
  every uvicorn process up.

Workers import this module too (``ferroq worker web_app``): ``double`` is
the task they run. Without FastAPI installed the same routes are served by
plain Starlette (``FRAMEWORK`` says which). (No ``from __future__ import
annotations`` here: FastAPI reads the body model from the annotation of a
function defined inside another.)
"""

import os
from typing import Any

from ferroq import Queue

queue = Queue(os.environ.get("FERROQ_WEB_URL", "memory://"))


@queue.task(name="web.double")
def double(n: int) -> int:
    """The task: a tiny bit of work."""
    return n * 2


def _fastapi_app() -> Any:
    """The app as users write it: FastAPI, a Pydantic body."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Job(BaseModel):
        n: int

    api = FastAPI()

    @api.post("/jobs")
    def post_job(job: Job) -> dict[str, int]:
        return {"id": double.send(job.n).id}

    @api.post("/jobs-async")
    async def post_job_async(job: Job) -> dict[str, int]:
        return {"id": (await double.asend(job.n)).id}

    @api.post("/inline")
    def post_inline(job: Job) -> dict[str, int]:
        return {"result": job.n * 2}

    @api.get("/health")
    def health() -> dict[str, int]:
        return {"pid": os.getpid()}

    return api


def _starlette_app() -> Any:
    """The same routes on plain Starlette, when FastAPI is not installed."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def post_job(request: Request) -> JSONResponse:
        n = int((await request.json())["n"])
        handle = await run_in_threadpool(double.send, n)
        return JSONResponse({"id": handle.id})

    async def post_job_async(request: Request) -> JSONResponse:
        n = int((await request.json())["n"])
        return JSONResponse({"id": (await double.asend(n)).id})

    async def post_inline(request: Request) -> JSONResponse:
        return JSONResponse({"result": int((await request.json())["n"]) * 2})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"pid": os.getpid()})

    return Starlette(
        routes=[
            Route("/jobs", post_job, methods=["POST"]),
            Route("/jobs-async", post_job_async, methods=["POST"]),
            Route("/inline", post_inline, methods=["POST"]),
            Route("/health", health),
        ]
    )


try:
    import fastapi  # noqa: F401

    FRAMEWORK = "fastapi"
except ImportError:
    FRAMEWORK = "starlette"

if os.environ.get("FERROQ_WEB_FRAMEWORK", FRAMEWORK) == "fastapi":
    app = _fastapi_app()
else:
    FRAMEWORK = "starlette"
    app = _starlette_app()
