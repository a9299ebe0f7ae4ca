"""`e2urec serve`: score (user, item) pairs with a run's current version and take deletion requests over HTTP.

Deletion requests are validated at once and honoured in the background by one worker thread, one at a time;
their raw ids live only in that worker's in-memory queue (the ledger keeps keyed hashes). When `current`
moves (a job here, or `e2urec forget` from a shell) the next caller loads the new version before anyone
scores again, so no answer comes from a model that still holds a forgotten user.

With tokens set, every endpoint but /health needs `Authorization: Bearer <token>` (a read token may score and
read jobs; the write token may also submit deletions), and the Host header must name an allowed host, so a
page in a browser cannot reach a loopback service by DNS rebinding.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import FastAPI, HTTPException, Response
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2urec.errors import E2URecError, UnknownIds
from e2urec.io import read_text
from e2urec.ops.forget import Request, failure, forget, read_request, recover, submit
from e2urec.ops.ledger import FINAL
from e2urec.ops.run import CURRENT, Run
from e2urec.ops.scorer import Scorer

log = logging.getLogger("e2urec.serve")

# An id as JSON gives it: an integer or a short string; cast to the dataset's id type when used.
Id = StrictInt | Annotated[str, Field(min_length=1, max_length=128)]


TOKEN_ENV, READ_TOKEN_ENV = "E2UREC_API_TOKEN", "E2UREC_API_READ_TOKEN"
MIN_TOKEN_CHARS = 16
READ_ONLY = {("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/score")}  # plus GET /jobs/{id}


class Unavailable(E2URecError):
    """The current version cannot be loaded (damaged run folder): nothing is scored until it can."""


@dataclass(frozen=True)
class Tokens:
    """Bearer tokens: `write` may do everything, `read` may score and read jobs. Empty: no authentication."""

    write: tuple[bytes, ...] = ()
    read: tuple[bytes, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.write or self.read)


def load_token(path: Path | None, env: str, what: str) -> tuple[bytes, ...]:
    """A token from a file (first line) or else the environment; too short a token is refused, never echoed."""
    text = read_text(path, what).strip().splitlines()[0:1] if path is not None else [os.environ.get(env, "")]
    token = (text[0] if text else "").strip()
    if not token:
        if path is not None:
            raise E2URecError(f"{what} {path}: empty; write a random token in it (e.g. `openssl rand -hex 32`)")
        return ()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise E2URecError(f"{what}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                          f"(e.g. `openssl rand -hex 32`)")
    return (token.encode(),)


def load_tokens(token_file: Path | None = None, read_token_file: Path | None = None) -> Tokens:
    """The service's tokens from `--token-file`/`--read-token-file`, else E2UREC_API_TOKEN/E2UREC_API_READ_TOKEN."""
    tokens = Tokens(load_token(token_file, TOKEN_ENV, "--token-file"),
                    load_token(read_token_file, READ_TOKEN_ENV, "--read-token-file"))
    if tokens.read and not tokens.write:
        raise E2URecError("a read token alone would leave /forget open; set the write token too (--token-file or "
                          f"{TOKEN_ENV})")
    return tokens


class Auth:
    """Bearer-token check before anything else runs (constant-time compares; tokens are never logged)."""

    def __init__(self, app: ASGIApp, tokens: Tokens):
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        given = given.strip() if scheme.lower() == b"bearer" else b""
        is_write = any([hmac.compare_digest(given, token) for token in self.tokens.write])
        is_read = any([hmac.compare_digest(given, token) for token in self.tokens.read])
        reading = (scope["method"], scope["path"]) in READ_ONLY or (
            scope["method"] == "GET" and scope["path"].startswith("/jobs/"))
        if is_write or (is_read and reading):
            await self.app(scope, receive, send)
            return
        if is_read:
            response = JSONResponse({"detail": "this token may only read; deletions need the write token"}, 403)
        else:
            response = JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                    401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


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
    status: str = Field(description="queued, or done/unverified when an identical request was honoured already")
    version: str | None = Field(None, description="the version that honours it, when done")


class Job(BaseModel):
    request_id: str
    kind: str
    status: str = Field(description="queued | running | done | unverified (forgetting audit failed) | failed")
    created: float
    finished: float | None = None
    version: str | None = None
    metrics: dict[str, Any] | None = None
    row_counts: dict[str, int] | None = None
    seconds: float | None = None
    error: str | None = None
    audit: dict[str, Any] | None = Field(None, description="the forgetting audit: statistic, tolerance, sample "
                                         "counts, figures before and after, verdict pass | fail | insufficient")


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
        self.ledger = self.run.ledger()
        self._lock = threading.Lock()
        self.recover()
        self._scorer: Scorer | None = None
        self._broken: tuple[str, str] | None = None  # (version name, why it cannot be loaded)
        try:
            self.scorer()
        except Unavailable as exc:  # served as 503 with the reason; /health says so
            log.error("%s", exc)
        self.worker = Worker(self)

    def recover(self) -> None:
        """Requests left queued or running by a process that died are marked failed, and their scratch data is
        swept (unless another process holds the run's lock: it sweeps when it finishes)."""
        with self.run.try_lock() as held:
            try:
                orphans = recover(self.run, self.ledger, sweep=held)
            except E2URecError:  # a damaged current version: still fail the orphans; /health reports the rest
                orphans = self.ledger.fail_orphans()
        if orphans:
            log.warning("%d requests left by a stopped process were marked failed", len(orphans))

    def _current_name(self) -> str:
        try:
            return (self.run.root / CURRENT).readlink().name
        except OSError as exc:
            raise Unavailable(f"{self.run.root / CURRENT}: unreadable ({exc}); the run folder is damaged") from exc

    def scorer(self) -> Scorer:
        """The scorer of the version `current` points at now; a caller keeps the one it got for its whole request.

        A readlink per call notices a swap; the first caller after one loads the new version while holding the
        lock, so later callers wait for it rather than score with the old model."""
        scorer, name = self._scorer, self._current_name()
        if scorer is not None and name == scorer.version:
            return scorer
        with self._lock:
            name = self._current_name()
            if self._broken is not None and self._broken[0] == name:
                raise Unavailable(self._broken[1])
            if self._scorer is None or name != self._scorer.version:
                try:
                    self._scorer = Scorer(self.run.root)
                except Exception as exc:
                    reason = f"cannot load the current version {name}: {type(exc).__name__}: {exc}"
                    self._broken = (name, reason)
                    raise Unavailable(reason) from exc
                self._broken = None
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
        except Exception as exc:  # forget() has recorded the failure in the ledger; no traceback: it may quote ids
            log.error("request %s failed: %s", job_id, failure(exc, request))
            return
        if not record["noop"]:
            try:
                self.service.scorer()  # load the new version now rather than on the next request
            except Unavailable as exc:
                log.error("request %s: done, but its version cannot be loaded: %s", job_id, exc)


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length and by the bytes actually sent (a chunked
    body has no Content-Length), a body that stalls (or is shorter than its Content-Length) with 408 after
    `timeout` seconds, and a JSON body that is not UTF-8 with 422, before any endpoint parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 5.0):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

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
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                await JSONResponse({"detail": f"request body not received within {self.timeout:g} s (shorter "
                                              f"than its Content-Length?)"}, status_code=408)(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await too_big(scope, receive, send)
                return
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if b"json" in content_type:
            try:
                bytes(body).decode("utf-8")
            except UnicodeDecodeError as exc:
                await JSONResponse({"detail": f"request body is not UTF-8 (byte {exc.start}); send JSON in UTF-8"},
                                   status_code=422)(scope, receive, send)
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


def create_app(run: Path, max_pairs: int = 1000, max_body_bytes: int = 1_000_000, tokens: Tokens | None = None,
               allowed_hosts: Sequence[str] | None = None, body_timeout: float = 5.0) -> FastAPI:
    """The service for the run at `run`. Its current version is loaded now; a damaged one is reported by /health
    and answered with 503. `tokens` turn on bearer authentication; `allowed_hosts` the Host header check."""
    for name, value in (("max_pairs", max_pairs), ("max_body_bytes", max_body_bytes), ("body_timeout", body_timeout)):
        if not value > 0 or value == float("inf"):
            raise E2URecError(f"{name} must be a positive finite number, got {value}")
    service = Service(Path(run))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.worker.stop()

    app = FastAPI(title="e2urec", summary="LLM recommendation scores from a run that can forget users",
                  lifespan=lifespan)
    app.state.service, app.state.worker = service, service.worker
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    if tokens is not None and tokens.enabled:
        app.add_middleware(Auth, tokens=tokens)
    if allowed_hosts is not None:  # added last, so it runs first
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(E2URecError)
    async def bad_input(request: HTTPRequest, exc: E2URecError) -> JSONResponse:
        code = 404 if isinstance(exc, UnknownIds) else 503 if isinstance(exc, Unavailable) else 422
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back, and fails with a 500 on a body that is not UTF-8.
        errors = [{k: error[k] for k in ("type", "loc", "msg") if k in error} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/health", response_model=Health, responses=ERRORS)
    def health() -> Any:
        """The served version, the deletion requests it honours, and the deletion queue's length; 503 with the
        reason when the current version cannot be loaded (damaged weights, say)."""
        try:
            scorer = service.scorer()
        except Unavailable as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
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
            status = record["status"] if record["status"] in FINAL else "done"  # ids forgotten by other requests
            return Accepted(job_id=record["request_id"], status=status, version=record["version"])
        rid = record["request_id"]
        if record["status"] == "failed":  # a retry: queued again under the same id
            service.ledger.update(rid, status="queued", error=None)
        service.worker.enqueue(rid, request)
        return Accepted(job_id=rid, status="running" if record["status"] == "running" else "queued")

    @app.get("/jobs/{job_id}", responses=ERRORS)
    def job(job_id: str) -> Job:
        """A deletion request's ledger record: status, the version that honours it, test metrics, the forgetting
        audit, timing."""
        record = service.ledger.get(job_id)
        if record is None:
            raise HTTPException(404, f"no request {job_id!r} in this run's ledger")
        return Job(**{k: v for k, v in record.items() if k in Job.model_fields},
                   audit=(record["metrics"] or {}).get("audit"))

    return app
