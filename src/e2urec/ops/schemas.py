"""The service's request and response bodies (pydantic): what /score, /forget, /jobs and /health accept and
return, and the one problem body every error uses.

Ids are typed as the run's data types them, so the schema at /openapi.json states one type per id: an integer
for MovieLens and integer CSV ids (any integer: one outside the column's range is unknown, 404, like any id not
in the data), a string without surrounding whitespace for Goodreads and other text ids. A
string where the data has integers ("796" for user 796) is refused by validation, never cast: a loosely typed
id once deleted a user from a body the caller meant as text. The request models are therefore built per run
(`api_models`); the responses that do not carry ids are fixed.

Bodies that come in several shapes (one pair or many; users or interactions, with or without timestamps) are
unions of closed models (`additionalProperties: false`, each with its own required key), so at most one
variant matches any body; the schema says `oneOf`, which is what the service enforces."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr

from e2urec.ops.request import Request, read_request

# Every character Python's str.strip() removes: a text id must not start or end with one, since the data's ids
# are stored stripped and a padded id would otherwise be trimmed into another, silently.
WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def _ranges(chars: str) -> str:
    """A regex class body for `chars` as \\uXXXX runs (a-b where consecutive): short enough to read."""
    runs: list[list[int]] = []
    for code in map(ord, chars):
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(f"\\u{a:04x}" + (f"-\\u{b:04x}" if b > a else "") for a, b in runs)


_CLASS = _ranges(WHITESPACE)
TEXT_ID_PATTERN = f"^[^{_CLASS}]([\\s\\S]*[^{_CLASS}])?$"  # \uXXXX: the same in ECMA, Python and Rust regexes


def _unpadded(value: str) -> str:
    """The check TEXT_ID_PATTERN states, done with Python's own definition of whitespace (regex engines differ)."""
    if value != value.strip():
        raise ValueError("an id may not start or end with whitespace")
    return value


TextId = Annotated[StrictStr, Field(min_length=1, max_length=128, json_schema_extra={"pattern": TEXT_ID_PATTERN},
                                    description="a string: this run's data has text ids (an integer is refused)"),
                   AfterValidator(_unpadded)]


IntegerId = Annotated[StrictInt, Field(description="an integer: this run's data has integer ids (a string such as "
                                                "\"42\" is refused); one outside the column's range names no row: 404")]


@dataclass(frozen=True)
class IdTypes:
    """The annotation each id field gets: user ids (events), item ids (items), timestamps (events)."""

    user: Any
    item: Any
    timestamp: Any

    @classmethod
    def of(cls, data: Path) -> IdTypes:
        """Read from the parquet schemas of a version's data folder (no rows are read): the types cannot
        change across versions, as every version's tables are rebuilt from the first one's."""

        def column(table: str, name: str) -> Any:
            kind = pq.read_schema(data / f"{table}.parquet").field(name).type
            return IntegerId if pa.types.is_integer(kind) else TextId

        return cls(column("events", "user_id"), column("items", "item_id"), column("events", "timestamp"))

    @classmethod
    def loose(cls) -> IdTypes:
        """Only for a run whose data cannot be read: /score and /forget answer 503 then, so nothing is cast."""
        return cls(IntegerId | TextId, IntegerId | TextId, IntegerId)


def _one_of(schema: dict[str, Any]) -> None:
    """Pydantic writes a union as anyOf; the variants here exclude each other, so oneOf is the exact claim and
    a client (or a fuzzer) reading the schema never builds a body that two variants accept."""
    schema["oneOf"] = schema.pop("anyOf")


CLOSED = ConfigDict(extra="forbid")
ONE_OF = ConfigDict(json_schema_extra=_one_of)
LIMIT = "at most the service's --max-pairs per request (1000 by default); more → 413"


@dataclass(frozen=True)
class Api:
    """The id-carrying models of one run's service."""

    Pair: type[BaseModel]
    PairScore: type[BaseModel]
    Scores: type[BaseModel]
    ScoreBody: type[RootModel]
    ForgetBody: type[RootModel]


def api_models(ids: IdTypes) -> Api:
    """The request and response models whose ids have this run's types (see the module's docstring)."""
    UserId, ItemId, Timestamp = ids.user, ids.item, ids.timestamp  # noqa: N806 (read by pydantic as annotations)

    class Pair(BaseModel):
        model_config = CLOSED
        user_id: UserId
        item_id: ItemId

    class Pairs(BaseModel):
        model_config = CLOSED
        pairs: list[Pair] = Field(min_length=1, description=LIMIT)

    class ScoreBody(RootModel[Pairs | Pair]):
        """One pair, or many under `pairs`."""

        model_config = ONE_OF

        def pairs(self) -> list[Pair]:
            return self.root.pairs if isinstance(self.root, Pairs) else [self.root]

    class PairScore(Pair):
        p_yes: float = Field(ge=0.0, le=1.0, description="P(yes): the model's probability that the user likes "
                                                         "the item")

    class Scores(BaseModel):
        version: str = Field(description="the model version that scored every pair of this response")
        scores: list[PairScore]

    class Interaction(BaseModel):
        model_config = CLOSED
        user_id: UserId
        item_id: ItemId

    class TimedInteraction(Interaction):
        timestamp: Timestamp = Field(description="unix seconds: only the event at this time is forgotten")

    class ForgetUsers(BaseModel):
        """Forget whole users: every event, sample and profile row of theirs."""

        model_config = CLOSED
        user_ids: list[UserId] = Field(min_length=1, description=LIMIT)

        def request(self) -> Request:
            return read_request(users=[str(u) for u in self.user_ids])

        def columns(self) -> dict[str, list]:
            return {"user_id": self.user_ids}

    class ForgetInteractions(BaseModel):
        """Forget single interactions: every event of each (user, item) pair."""

        model_config = CLOSED
        interactions: list[Interaction] = Field(min_length=1, description=LIMIT)

        def request(self) -> Request:
            return read_request(interactions=pd.DataFrame([row.model_dump() for row in self.interactions]))

        def columns(self) -> dict[str, list]:
            rows = [row.model_dump() for row in self.interactions]
            return {name: [row[name] for row in rows] for name in rows[0]}

    class ForgetTimedInteractions(ForgetInteractions):
        """Forget single interactions, each the event of a (user, item) pair at one time."""

        interactions: list[TimedInteraction] = Field(min_length=1, description=LIMIT)

    class ForgetBody(RootModel[ForgetUsers | ForgetInteractions | ForgetTimedInteractions]):
        """Exactly one of: whole users, or interactions (with a timestamp on every one, or on none)."""

        model_config = ONE_OF

        def request(self) -> Request:
            return self.root.request()

        def columns(self) -> dict[str, list]:
            """The ids by events column (user_id, item_id, timestamp), in the order given."""
            return self.root.columns()

        def size(self) -> int:
            return len(self.root.user_ids if isinstance(self.root, ForgetUsers) else self.root.interactions)

    return Api(Pair, PairScore, Scores, ScoreBody, ForgetBody)


class Accepted(BaseModel):
    job_id: str = Field(description="the ledger's request id; poll GET /jobs/{job_id}")
    status: str = Field(description="queued, or done/unverified when an identical request was honoured already")
    version: str | None = Field(None, description="the version that honours it, when done")


class JobStatus(BaseModel):
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


class FieldError(BaseModel):
    """Where a body failed validation; the offending value is never echoed (it may be an id)."""

    type: str = Field(description="pydantic's error type, e.g. int_type, missing, extra_forbidden")
    loc: list[str | int] = Field(description="the path to the failing part of the request, e.g. body.user_ids.0")
    msg: str


class Problem(BaseModel):
    """The body of every error, whatever its status: what went wrong and what to do, in `detail`."""

    detail: str = Field(description="the reason; counts of unknown ids, never the ids themselves")
    errors: list[FieldError] | None = Field(None, description="on 422 for a body that does not match the schema: "
                                                              "each failing part")


ERROR_TEXT: dict[int, str] = {
    400: "the body cannot be parsed (an integer of over 4,300 digits, say), or the Host header names a host this "
         "service does not answer to (DNS-rebinding guard)",
    401: "missing or wrong bearer token (Authorization: Bearer <token>)",
    403: "this token may only read; deletions need the write token",
    404: "unknown id (never seen, or forgotten): the reason gives counts, never the ids",
    408: "the request body did not arrive in time (shorter than its Content-Length?)",
    413: "body over the byte limit, or more pairs or ids than one request may carry",
    422: "the body does not match this schema (`errors` says where), or is not UTF-8 JSON",
    500: "an unexpected failure; the service's log has the details",
    503: "the current version cannot be loaded (damaged run folder)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses, every one with the Problem body."""
    return {code: {"model": Problem, "description": ERROR_TEXT[code]} for code in sorted(codes)}
