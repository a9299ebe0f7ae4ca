"""Who may call the service and how much they may send: bearer tokens (a read token scores and reads jobs,
the write token may also submit deletions; compared in constant time, never logged) and a request-body
limit enforced while the body streams in."""

from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2urec.errors import E2URecError
from e2urec.io import read_text

TOKEN_ENV, READ_TOKEN_ENV = "E2UREC_API_TOKEN", "E2UREC_API_READ_TOKEN"


MIN_TOKEN_CHARS = 16


READ_ONLY = {("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/score")}  # plus GET /jobs/{id}


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
        source = f"{what} {path}" if path is not None else env  # where the short token came from
        raise E2URecError(f"{source}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
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
