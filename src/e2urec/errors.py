"""One exception type for every user-facing failure, so the CLI can print it plainly and exit non-zero."""


class E2URecError(Exception):
    """A problem with the user's input or environment: the message says what, where and what to do."""


class Diverged(E2URecError):
    """Training produced a non-finite loss or gradient: the weights are no longer a model. Raised instead of
    carrying on (or silently falling back to an earlier state), so nothing is written as if it had finished."""


class NonFinite(E2URecError):
    """A model's outputs (or weights) hold NaN or infinity: it diverged or was damaged, and no metric of it means
    anything. The message names the model."""


class Degenerate(E2URecError):
    """A model that runs but no longer ranks anything: constant predictions or exploded weights. It would look
    perfectly forgotten (every forget metric at chance), so it is named and never reported as an unlearning."""


# A model that cannot be used as a result: a bench row fails, a deletion request moves on to its next attempt.
BROKEN_MODEL = (Degenerate, Diverged, NonFinite)


class UnknownIds(E2URecError):
    """Ids that are not in the data (never seen, or forgotten already): the service answers 404 for these. The
    message gives counts; the ids stay on the object for the caller that sent them."""

    def __init__(self, where: str, users: list | None = None, items: list | None = None,
                 interactions: list | None = None):
        self.users, self.items, self.interactions = list(users or []), list(items or []), list(interactions or [])
        # Counts only: an id named in a request must not reach a log, a ledger row or a response.
        parts = [f"{len(values)} {what} not in the data"
                 for what, values in (("users", self.users), ("items", self.items),
                                      ("interactions", self.interactions)) if values]
        super().__init__(f"{where}: " + "; ".join(parts) + " (unknown, or forgotten by an earlier request)")
