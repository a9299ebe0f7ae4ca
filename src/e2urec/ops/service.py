"""`e2urec serve`: score (user, item) pairs with a run's current version and take deletion requests over HTTP.

Deletion requests are validated at once and honoured in the background by one worker thread, one at a time;
their raw ids live only in that worker's in-memory queue (the ledger keeps keyed hashes). When `current`
moves (a job here, or `e2urec forget` from a shell) the next caller loads the new version before anyone
scores again, so no answer comes from a model that still holds a forgotten user.

With tokens set, every endpoint but /health needs `Authorization: Bearer <token>` (a read token may score and
read jobs; the write token may also submit deletions), and the Host header must name an allowed host, so a
page in a browser cannot reach a loopback service by DNS rebinding."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from e2urec.errors import E2URecError, UnknownIds
from e2urec.ops.access import Auth, BodyLimit, Tokens
from e2urec.ops.forget import Request, failure, forget, recover, submit
from e2urec.ops.ledger import FINAL
from e2urec.ops.run import CURRENT, Run
from e2urec.ops.schemas import ERRORS, Accepted, ForgetBody, Health, JobStatus, Pair, Pairs, PairScore, Scores
from e2urec.ops.scorer import Scorer

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
    def job(job_id: str) -> JobStatus:
        """A deletion request's ledger record: status, the version that honours it, test metrics, the forgetting
        audit, timing."""
        record = service.ledger.get(job_id)
        if record is None:
            raise HTTPException(404, f"no request {job_id!r} in this run's ledger")
        return JobStatus(**{k: v for k, v in record.items() if k in JobStatus.model_fields},
                   audit=(record["metrics"] or {}).get("audit"))

    return app
