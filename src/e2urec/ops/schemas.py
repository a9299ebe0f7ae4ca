"""The service's request and response bodies (pydantic): what /score, /forget, /jobs and /health accept and
return, and the problem body every error uses."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from e2urec.ops.forget import Request, read_request

# An id as JSON gives it: an integer or a short string; cast to the dataset's id type when used.
Id = StrictInt | Annotated[str, Field(min_length=1, max_length=128)]


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


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in ((404, "unknown id (never seen, or forgotten)"), (413, "body too large or too many ids"),
                       (503, "the current version cannot be loaded"))}
