"""`e2urec serve`: score (user, item) pairs with a run's current version and take deletion requests over HTTP.

Deletion requests are validated at once and honoured in the background by one worker thread, one at a time;
their raw ids live only in that worker's in-memory queue (the ledger keeps keyed hashes). When `current`
moves (a job here, or `e2urec forget` from a shell) the next caller loads the new version before anyone
scores again, so no answer comes from a model that still holds a forgotten user.

With tokens set, every endpoint but /health needs `Authorization: Bearer <token>` (a read token may score and
read jobs; the write token may also submit deletions), and the Host header must name an allowed host, so a
page in a browser cannot reach a loopback service by DNS rebinding.

The schema at /openapi.json is the contract: ids typed as the run's data types them, every error (from the
routes, from validation and from the middleware alike) a `Problem` body under a status each route declares.
(No `from __future__ import annotations` here: the routes are annotated with models built per run inside
`create_app`, which FastAPI could not resolve from strings.)"""

import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException, Response
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from e2urec.errors import E2URecError, NonFinite, UnknownIds
from e2urec.ops.access import Auth, BodyLimit, Tokens
from e2urec.ops.forget import forget, recover, submit
from e2urec.ops.ledger import FINAL, coarse
from e2urec.ops.request import Request, failure
from e2urec.ops.run import CURRENT, Run, data_dir
from e2urec.ops.schemas import Accepted, Health, IdTypes, JobStatus, api_models, errors
from e2urec.ops.scorer import Scorer, outside

log = logging.getLogger("e2urec.serve")


class Unavailable(E2URecError):
    """The current version cannot be loaded (damaged run folder): nothing is scored until it can."""


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


def too_many(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise HTTPException(413, f"{count:,} {what} in one request; at most {limit:,} (split it up)")


def problem(code: int, detail: str, **extra: Any) -> JSONResponse:
    """The one error body (schemas.Problem), so every status a client can get parses the same way."""
    return JSONResponse({"detail": detail, **extra}, status_code=code)


# What the CLI calls the parts of a request, and what the JSON body calls them: an HTTP error names the latter.
FIELDS = {"--users": "user_ids", "--interactions": "interactions"}


def for_api(exc: E2URecError) -> E2URecError:
    """A deletion request's error as the HTTP caller knows the request: JSON field names, not CLI flags. Unknown
    ids are rebuilt from their lists, so the message still gives counts only."""
    text = str(exc)
    if not any(flag in text for flag in FIELDS):
        return exc
    if isinstance(exc, UnknownIds):
        where = next(field for flag, field in FIELDS.items() if flag in text)
        return UnknownIds(where, users=exc.users, items=exc.items, interactions=exc.interactions)
    for flag, field in FIELDS.items():
        text = text.replace(flag, field)
    return E2URecError(text)


def beyond_range(columns: dict[str, list], events: pd.DataFrame) -> None:
    """Ids beyond their column's integer range name no row: unknown (404) like any other id not in the data,
    where the cast deeper down would refuse them as malformed (422) although the schema calls them valid."""
    far = {name: set(outside(values, events[name])) for name, values in columns.items()}
    if not any(far.values()):
        return
    rows = [row for row in zip(*columns.values(), strict=True)
            if any(value in far[name] for name, value in zip(columns, row, strict=True))]
    if list(columns) == ["user_id"]:
        raise UnknownIds("user_ids", users=[row[0] for row in rows])
    raise UnknownIds("interactions", interactions=rows)


class HostCheck:
    """Starlette's Host-header check (DNS-rebinding guard), answering a refused host with a Problem body rather
    than its plain-text one, and never redirecting to a www. host (a 307 no route declares)."""

    MARK = "e2urec.host_ok"

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]):
        self.app = app
        self.check = TrustedHostMiddleware(self._passed, allowed_hosts=list(allowed_hosts), www_redirect=False)

    @classmethod
    async def _passed(cls, scope: Scope, receive: Receive, send: Send) -> None:
        scope[cls.MARK] = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            async def discard(message: Any) -> None:  # the check's own refusal is replaced below
                return None

            await self.check(scope, receive, discard)
            if not scope.pop(self.MARK, False):
                await problem(400, "invalid Host header: name a host this service answers to")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def id_types(root: Path) -> IdTypes | None:
    """The run's id types for the schema; None when its data cannot be read (then /score and /forget answer 503
    until a restart, even if the run is repaired meanwhile: a loosely typed id would be cast, not refused)."""
    try:
        return IdTypes.of(data_dir(Run(root).current()))
    except Exception as exc:  # the damage is reported by /health and every 503, with the reason
        log.error("cannot read the id types of the current version (%s); /score and /forget answer 503 until "
                  "the service is restarted on a sound run", type(exc).__name__)
        return None


def create_app(run: Path, max_pairs: int = 1000, max_body_bytes: int = 1_000_000, tokens: Tokens | None = None,
               allowed_hosts: Sequence[str] | None = None, body_timeout: float = 5.0) -> FastAPI:
    """The service for the run at `run`. Its current version is loaded now; a damaged one is reported by /health
    and answered with 503. `tokens` turn on bearer authentication; `allowed_hosts` the Host header check. The
    schema declares exactly the statuses these choices make possible, each with the Problem body."""
    for name, value in (("max_pairs", max_pairs), ("max_body_bytes", max_body_bytes), ("body_timeout", body_timeout)):
        if not value > 0 or value == float("inf"):
            raise E2URecError(f"{name} must be a positive finite number, got {value}")
    service = Service(Path(run))
    types = id_types(Path(run))
    api = api_models(types or IdTypes.loose())

    def typed_scorer() -> Scorer:
        """The current scorer, once the schema could type this run's ids (else nothing is read or deleted)."""
        if types is None:
            raise Unavailable("the run's id types could not be read when the service started; restart it once "
                              "`e2urec serve` can load the current version")
        return service.scorer()
    guarded = tokens is not None and tokens.enabled

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.worker.stop()

    app = FastAPI(title="e2urec", summary="LLM recommendation scores from a run that can forget users",
                  lifespan=lifespan)
    app.state.service, app.state.worker = service, service.worker
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    if guarded:
        app.add_middleware(Auth, tokens=tokens)
    if allowed_hosts is not None:  # added last, so it runs first
        app.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts))

    # Statuses any route can answer: FastAPI's body parser, the body limits, the Host check, an unexpected failure.
    anywhere = {400, 408, 413, 422, 500}
    secured = {401} if guarded else set()
    security: dict[str, Any] = {"security": [{"bearer": []}]} if guarded else {}
    job_link = {"job": {"operationId": "job", "parameters": {"job_id": "$response.body#/job_id"},
                        "description": "the deletion request's status"}}

    @app.exception_handler(E2URecError)
    async def bad_input(request: HTTPRequest, exc: E2URecError) -> JSONResponse:
        # A served model that scores NaN is the service's fault, not the caller's: 503, as for missing data.
        status = 404 if isinstance(exc, UnknownIds) else 503 if isinstance(exc, Unavailable | NonFinite) else 422
        return problem(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back (an id, maybe), has no `detail` string like every other
        # error, and fails with a 500 on a body that is not UTF-8.
        found = [{"type": str(error.get("type", "")), "loc": [part if isinstance(part, int) else str(part)
                                                              for part in error.get("loc", ())],
                  "msg": str(error.get("msg", ""))} for error in exc.errors()]
        where = ", ".join(".".join(map(str, error["loc"])) for error in found[:5])
        return problem(422, f"the request does not match the schema at /openapi.json ({len(found)} "
                            f"error{'s' * (len(found) != 1)}: {where}); see `errors`", errors=found)

    @app.exception_handler(Exception)
    async def unexpected(request: HTTPRequest, exc: Exception) -> JSONResponse:
        # The message may quote a row; the log has the traceback, the caller only the status.
        return problem(500, "unexpected failure; see the service's log")

    @app.get("/health", operation_id="health", response_model=Health, responses=errors(503, *anywhere))
    def health() -> Any:
        """The served version, the deletion requests it honours, and the deletion queue's length; 503 with the
        reason when the current version cannot be loaded (damaged weights, say)."""
        try:
            scorer = service.scorer()
        except Unavailable as exc:
            return problem(503, str(exc), status="unavailable")
        return Health(status="ok", version=scorer.version, honours=scorer.honours, queue=service.worker.size)

    @app.post("/score", operation_id="score", response_model=api.Scores, openapi_extra=security,
              responses=errors(404, 503, *anywhere, *secured))
    def score(body: api.ScoreBody) -> Any:
        """P(yes) for one pair or many, each prompt built from the user's retained history only."""
        pairs = body.pairs()
        too_many(len(pairs), max_pairs, "pairs")
        scorer = typed_scorer()
        p_yes = scorer.score([p.user_id for p in pairs], [p.item_id for p in pairs])
        return api.Scores(version=scorer.version, scores=[
            api.PairScore(user_id=p.user_id, item_id=p.item_id, p_yes=float(v)) for p, v in zip(pairs, p_yes,
                                                                                               strict=True)])

    @app.post("/forget", operation_id="forget", status_code=202, response_model=Accepted, openapi_extra=security,
              responses={**errors(404, 503, *anywhere, *secured, *({403} if guarded else ())),
                         202: {"description": "queued (or running already)", "links": job_link},
                         200: {"model": Accepted, "description": "honoured already", "links": job_link}})
    def post_forget(body: api.ForgetBody, response: Response) -> Any:
        """Validate a deletion request now and queue it; poll GET /jobs/{job_id} until it is done."""
        too_many(body.size(), max_pairs, "ids")
        try:
            request = body.request()
            scorer = typed_scorer()
            beyond_range(body.columns(), scorer.events)
            record, done, _ = submit(service.ledger, request, scorer.events)  # UnknownIds → 404
        except Unavailable:
            raise
        except E2URecError as exc:
            raise for_api(exc) from None
        if done:
            response.status_code = 200
            status = record["status"] if record["status"] in FINAL else "done"  # ids forgotten by other requests
            return Accepted(job_id=record["request_id"], status=status, version=record["version"])
        rid = record["request_id"]
        if record["status"] == "failed":  # a retry: queued again under the same id
            service.ledger.update(rid, status="queued", error=None)
        service.worker.enqueue(rid, request)
        return Accepted(job_id=rid, status="running" if record["status"] == "running" else "queued")

    @app.get("/jobs/{job_id}", operation_id="job", response_model=JobStatus, openapi_extra=security,
             responses=errors(404, *anywhere, *secured))
    def job(job_id: str) -> Any:
        """A deletion request's ledger record: status, the version that honours it, test metrics, the forgetting
        audit, timing."""
        # As recovery will leave it (a dead process's request is failed), counts coarse (docs/security.md)
        record = coarse(service.run.settle(service.ledger.get(job_id)))
        if record is None:
            raise HTTPException(404, f"no request {job_id!r} in this run's ledger")
        return JobStatus(**{k: v for k, v in record.items() if k in JobStatus.model_fields},
                         audit=(record["metrics"] or {}).get("audit"))

    if guarded:
        document = app.openapi

        def openapi() -> dict[str, Any]:
            """FastAPI's schema plus the bearer scheme the Auth middleware enforces (routes name it above)."""
            schema = document()
            schema.setdefault("components", {}).setdefault("securitySchemes", {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the write token, or the read token for /score and /jobs"}})
            return schema

        app.openapi = openapi  # type: ignore[method-assign]

    return app
