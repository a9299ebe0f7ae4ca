"""One exception type for every user-facing failure, so the CLI can print it plainly and exit non-zero."""


class E2URecError(Exception):
    """A problem with the user's input or environment: the message says what, where and what to do."""
