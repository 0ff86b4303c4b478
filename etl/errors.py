"""The two failure kinds every stage reports, and nothing else.

A failure is either *terminal* (the data itself is wrong: retrying cannot help, the message is
recorded as rejected) or *transient* (a system we depend on is unreachable or busy: retry later,
and leave the messages in SQS so nothing is lost). I/O modules translate their driver's
exceptions into these; tasks decide what to do from the kind alone.

Messages of these exceptions never contain message bodies or PII: only codes, counts and names.
"""


class EtlError(Exception):
    """Base of all errors raised on purpose by etl."""


class ConfigError(EtlError):
    """A setting is missing or invalid; the process must not start."""


class TransientError(EtlError):
    """A dependency failed in a way that may heal by itself (retry with backoff)."""


class TerminalError(EtlError):
    """The data cannot be processed, ever (record it, never retry)."""


class Forbidden(TerminalError):
    """The database refused the login a privilege (SQLSTATE 42501): terminal, and worth naming."""


class Expired(TerminalError):
    """A sealed chunk older than its messages' visibility timeout: by now the source hands its
    messages out again, so the chunk is dropped, never written (a captured chunk cannot be replayed)."""
