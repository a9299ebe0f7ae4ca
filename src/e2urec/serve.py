"""`e2urec serve`: score (user, item) pairs with a run's current version and take deletion requests over HTTP.

Deletion requests are validated at once and honoured in the background by one worker thread, one at a time;
their raw ids live only in that worker's in-memory queue (the ledger keeps salted hashes). When `current`
moves (a job here, or `e2urec forget` from a shell) the next caller loads the new version before anyone
scores again, so no answer comes from a model that still holds a forgotten user.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import FastAPI, HTTPException, Response
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2urec.errors import E2URecError, UnknownIds
from e2urec.ops.forget import Request, forget, read_request, submit
from e2urec.ops.ledger import Ledger
from e2urec.ops.run import CURRENT, Run
from e2urec.ops.scorer import Scorer

log = logging.getLogger("e2urec.serve")

# An id as JSON gives it: an integer or a short string; cast to the dataset's id type when used.
Id = StrictInt | Annotated[str, Field(min_length=1, max_length=128)]


class Unavailable(E2URecError):
    """The current version cannot be loaded (damaged run folder): nothing is scored until it can."""


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    item_id: Id


class Pairs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(min_length=1)


class PairScore(Pair):
    p_yes: float = Field(ge=0.0, le=1.0, description="P(yes): the model's probability that the user likes the item")


class Scores(BaseModel):
    version: str = Field(description="the model version that scored every pair of this response")
    scores: list[PairScore]


class Interaction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    item_id: Id
    timestamp: Id | None = None


class ForgetBody(BaseModel):
    """Exactly one of: whole users, or single interactions (a timestamp on all of them or on none)."""

    model_config = ConfigDict(extra="forbid")
    user_ids: list[Id] | None = Field(None, min_length=1)
    interactions: list[Interaction] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def one_kind(self) -> ForgetBody:
        if (self.user_ids is None) == (self.interactions is None):
            raise ValueError("give exactly one of user_ids or interactions")
        if self.interactions and len({row.timestamp is None for row in self.interactions}) > 1:
            raise ValueError("give a timestamp on every interaction or on none")
        return self

    def request(self) -> Request:
        if self.user_ids is not None:
            return read_request(users=[str(u) for u in self.user_ids])
        rows = pd.DataFrame([row.model_dump(exclude_none=True) for row in self.interactions])
        return read_request(interactions=rows)

    def size(self) -> int:
        return len(self.user_ids if self.user_ids is not None else self.interactions)


class Accepted(BaseModel):
    job_id: str = Field(description="the ledger's request id; poll GET /jobs/{job_id}")
    status: str = Field(description="queued, or done when an identical request was honoured already")
    version: str | None = Field(None, description="the version that honours it, when done")


class Job(BaseModel):
    request_id: str
    kind: str
    status: str = Field(description="queued | running | done | failed")
    created: float
    finished: float | None = None
    version: str | None = None
    metrics: dict[str, Any] | None = None
    row_counts: dict[str, int] | None = None
    seconds: float | None = None
    error: str | None = None


class Health(BaseModel):
    status: str
    version: str
    honours: list[str] = Field(description="request ids the served version honours")
    queue: int = Field(description="deletion requests waiting or running in this service")


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in ((404, "unknown id (never seen, or forgotten)"), (413, "body too large or too many ids"),
                       (503, "the current version cannot be loaded"))}


class Service:
    """The run, the scorer of its current version (swapped whole, under a lock) and the deletion worker."""

    def __init__(self, root: Path):
        self.run = Run(root)
        self.ledger = Ledger(self.run.ledger_path)
        self._lock = threading.Lock()
        self._scorer = Scorer(self.run.root)
        self.worker = Worker(self)

    def _current_name(self) -> str:
        try:
            return (self.run.root / CURRENT).readlink().name
        except OSError as exc:
            raise Unavailable(f"{self.run.root / CURRENT}: unreadable ({exc}); the run folder is damaged") from exc

    def scorer(self) -> Scorer:
        """The scorer of the version `current` points at now; a caller keeps the one it got for its whole request.

        A readlink per call notices a swap; the first caller after one loads the new version while holding the
        lock, so later callers wait for it rather than score with the old model."""
        scorer = self._scorer
        if self._current_name() == scorer.version:
            return scorer
        with self._lock:
            if self._current_name() != self._scorer.version:
                try:
                    self._scorer = Scorer(self.run.root)
                except Exception as exc:
                    raise Unavailable(f"cannot load the current version: {type(exc).__name__}: {exc}") from exc
                log.info("now serving %s", self._scorer.version)
            return self._scorer


class Worker:
    """One thread honouring queued deletion requests in arrival order; raw ids exist only in its queue."""

    def __init__(self, service: Service):
        self.service = service
        self._jobs: queue.SimpleQueue[tuple[str, Request] | None] = queue.SimpleQueue()
        self._pending: set[str] = set()  # queued or running here
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="e2urec-forget", daemon=True)
        self._thread.start()

    @property
    def size(self) -> int:
        return len(self._pending)

    def enqueue(self, job_id: str, request: Request) -> None:
        """Queue a request recorded by `submit`; a job already waiting or running here is not queued twice."""
        with self._idle:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._jobs.put((job_id, request))

    def join_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is waiting or running; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Finish the running job; jobs still waiting are marked failed, as their ids go with this process."""
        self._stopping.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job_id, request = job
            try:
                if self._stopping.is_set():
                    self.service.ledger.update(job_id, status="failed",
                                               error="the service stopped before running it; submit it again")
                else:
                    self._run(job_id, request)
            finally:
                with self._idle:
                    self._pending.discard(job_id)
                    self._idle.notify_all()

    def _run(self, job_id: str, request: Request) -> None:
        try:
            record = forget(self.service.run.root, request, request_id=job_id, log=log.info)
        except Exception:  # forget() has recorded the failure in the ledger
            log.exception("request %s failed", job_id)
            return
        if not record["noop"]:
            try:
                self.service.scorer()  # load the new version now rather than on the next request
            except Unavailable:
                log.exception("request %s: done, but its version cannot be loaded", job_id)


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length and by the bytes actually sent (a chunked
    body has no Content-Length), before any endpoint parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = JSONResponse({"detail": f"request body over {self.max_bytes:,} bytes"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await too_big(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await too_big(scope, receive, send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def too_many(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise HTTPException(413, f"{count:,} {what} in one request; at most {limit:,} (split it up)")


def create_app(run: Path, max_pairs: int = 1000, max_body_bytes: int = 1_000_000) -> FastAPI:
    """The service for the run at `run`; its current version is loaded now, so a bad run fails at start."""
    service = Service(Path(run))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.worker.stop()

    app = FastAPI(title="e2urec", summary="LLM recommendation scores from a run that can forget users",
                  lifespan=lifespan)
    app.state.service, app.state.worker = service, service.worker
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(E2URecError)
    async def bad_input(request: HTTPRequest, exc: E2URecError) -> JSONResponse:
        code = 404 if isinstance(exc, UnknownIds) else 503 if isinstance(exc, Unavailable) else 422
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back, and fails with a 500 on a body that is not UTF-8.
        errors = [{k: error[k] for k in ("type", "loc", "msg") if k in error} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/health", responses=ERRORS)
    def health() -> Health:
        """The served version, the deletion requests it honours, and the deletion queue's length."""
        scorer = service.scorer()
        return Health(status="ok", version=scorer.version, honours=scorer.honours, queue=service.worker.size)

    @app.post("/score", responses=ERRORS)
    def score(body: Pairs | Pair) -> Scores:
        """P(yes) for one pair or many, each prompt built from the user's retained history only."""
        pairs = body.pairs if isinstance(body, Pairs) else [body]
        too_many(len(pairs), max_pairs, "pairs")
        scorer = service.scorer()
        p_yes = scorer.score([p.user_id for p in pairs], [p.item_id for p in pairs])
        return Scores(version=scorer.version, scores=[PairScore(user_id=p.user_id, item_id=p.item_id, p_yes=float(v))
                                                      for p, v in zip(pairs, p_yes, strict=True)])

    @app.post("/forget", status_code=202, responses={**ERRORS, 200: {"model": Accepted,
                                                                     "description": "honoured already"}})
    def post_forget(body: ForgetBody, response: Response) -> Accepted:
        """Validate a deletion request now and queue it; poll GET /jobs/{job_id} until it is done."""
        too_many(body.size(), max_pairs, "ids")
        request = body.request()
        scorer = service.scorer()
        record, done, _ = submit(service.ledger, request, scorer.events)  # UnknownIds → 404
        if done:
            response.status_code = 200
            return Accepted(job_id=record["request_id"], status="done", version=record["version"])
        rid = record["request_id"]
        if record["status"] == "failed":  # a retry: queued again under the same id
            service.ledger.update(rid, status="queued", error=None)
        service.worker.enqueue(rid, request)
        return Accepted(job_id=rid, status="running" if record["status"] == "running" else "queued")

    @app.get("/jobs/{job_id}", responses=ERRORS)
    def job(job_id: str) -> Job:
        """A deletion request's ledger record: status, the version that honours it, test metrics, timing."""
        record = service.ledger.get(job_id)
        if record is None:
            raise HTTPException(404, f"no request {job_id!r} in this run's ledger")
        return Job(**{k: v for k, v in record.items() if k in Job.model_fields})

    return app
