"""Chunks bounded by bytes as well as count, and handed on so that no message costs its neighbours
(pure: the broker is a ``send`` callable).

* ``weight`` / ``cut``: what a message adds to a packed chunk on the broker, and where a run of
  messages is cut into chunks of at most ``max_count`` messages and ``max_bytes`` broker bytes
  (a single message heavier than ``max_bytes`` travels alone).
* ``screen``: a body over the source's own maximum (1 MiB for SQS and Kinesis) is withheld: it
  travels as a stub (no body; its size and SHA-256 digest) and becomes a ``too_large`` rejection.
* ``deliver``: a chunk the broker refuses is split in halves and each half tried again; a single
  message that is refused twice, when it is heavy enough for a broker's size cap (``REFUSABLE``)
  and a stub of it goes through (so the broker is up), becomes a ``broker_refused`` rejection on
  its own. A light message is never withheld (no broker caps a value that small: the broker is
  failing, e.g. restarting), nor is one when even the stub fails: ``Undelivered`` then names every
  message not handed on, for the caller to give back, and the source delivers them again.
"""

import hashlib
from collections.abc import Callable
from dataclasses import replace

from etl.model.records import Message, Withheld

DEFAULT_CHUNK_BYTES = 983_040  # ETL_CHUNK_MAX_BYTES's default (etl.settings; a unit test keeps them equal)
SOURCE_MAX_BODY_BYTES = 1_048_576  # SQS and Kinesis both cap a message (a record's data) at 1 MiB
TOO_LARGE = "too_large"
BROKER_REFUSED = "broker_refused"
REASONS = (TOO_LARGE, BROKER_REFUSED)

# Bytes a message adds to a packed chunk besides its body and identifiers: its header entry (about
# 50 bytes of marshal framing and numbers). Generous: the estimate must not undercount.
MESSAGE_OVERHEAD = 96
# Bytes of a chunk's own framing in Redis (the sealed value: version, header length, GCM's 45
# bytes), generously: the task message itself, a few hundred bytes, is a value of its own.
CHUNK_OVERHEAD = 4096
# The lightest message ``deliver`` may withhold as ``broker_refused``. Redis's lowest
# proto-max-bulk-len is 1 MiB and managed services cap values at hundreds of MB: a lighter message
# that is refused met a failing broker (a restart, a dropped connection), not a cap, and is given
# back rather than rejected for ever.
REFUSABLE = 65_536


def body_bytes(message: Message) -> int:
    """The body's length in UTF-8 bytes (``isascii`` is O(1): no copy for an ASCII body)."""
    return utf8_bytes(message.body)


def utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def weight(message: Message) -> int:
    """Bytes this message adds to a sealed chunk in Redis (an upper estimate: bodies and
    identifiers travel as raw bytes, etl.model.records.pack_chunk)."""
    raw = body_bytes(message) + utf8_bytes(message.message_id) + utf8_bytes(message.receipt_handle) + MESSAGE_OVERHEAD
    if message.withheld is not None:
        raw += utf8_bytes(message.withheld.detail) + utf8_bytes(message.withheld.reason)
    return raw


def cut(
    messages: list[Message], max_count: int, max_bytes: int, weights: list[int] | None = None
) -> list[list[Message]]:
    """``messages`` in order, as chunks of at most ``max_count`` messages and ``max_bytes``
    estimated broker bytes each (a message heavier than that alone in its chunk). ``weights``:
    each message's ``weight``, when the caller has them already."""
    chunks: list[list[Message]] = []
    current: list[Message] = []
    load = CHUNK_OVERHEAD
    for message, w in zip(messages, map(weight, messages) if weights is None else weights, strict=True):
        if current and (len(current) >= max_count or load + w > max_bytes):
            chunks.append(current)
            current, load = [], CHUNK_OVERHEAD
        current.append(message)
        load += w
    if current:
        chunks.append(current)
    return chunks


def withhold(message: Message, reason: str, why: str) -> Message:
    """``message`` without its body: a stub that keeps the body's size and SHA-256 digest."""
    data = message.body.encode("utf-8", "surrogatepass")
    detail = f"body of {len(data)} bytes {why}; not kept (sha256 {hashlib.sha256(data).hexdigest()})"
    return replace(message, body="", withheld=Withheld(reason, detail, len(message.body)))


def screen(messages: list[Message], max_body: int = SOURCE_MAX_BODY_BYTES) -> list[Message]:
    """``messages`` with every body over ``max_body`` bytes withheld (``too_large``)."""
    return [
        withhold(m, TOO_LARGE, f"is over the source's limit of {max_body} bytes") if body_bytes(m) > max_body else m
        for m in messages
    ]


class Undelivered(Exception):
    """The broker is down: ``left`` are the messages not handed on (``cause`` the last failure)."""

    def __init__(self, left: list[Message], cause: BaseException) -> None:
        super().__init__(f"{len(left)} messages not handed on: {type(cause).__name__}")
        self.left = left
        self.cause = cause


def deliver(chunk: list[Message], send: Callable[[list[Message]], None], refusable: int = REFUSABLE) -> list[Message]:
    """Hand ``chunk`` to ``send``, in order; returns the messages withheld as ``broker_refused``.

    A refused part is split in halves, first half first (a stream's ranges stay in order). A
    single refused message is tried once more (the broker may have been reconnecting); refused
    again, it is replaced by its stub if it weighs at least ``refusable`` bytes. A lighter one, or
    one whose stub is refused too, means the broker is failing: Undelivered carries what is left
    (that message and everything after it).
    """
    refused: list[Message] = []
    todo: list[list[Message]] = [chunk]
    while todo:
        part = todo.pop()
        try:
            send(part)
            continue
        except Exception as exc:
            if len(part) > 1:
                half = len(part) // 2
                todo += [part[half:], part[:half]]
                continue
            failure: BaseException = exc
        only = part[0]
        left = [only] + [m for p in reversed(todo) for m in p]
        try:
            send(part)  # once more: a connection the broker dropped is made again on this try
            continue
        except Exception as exc:
            failure = exc
        if only.withheld is not None or weight(only) < refusable:  # no broker caps a value this small
            raise Undelivered(left, failure) from failure
        stub = withhold(only, BROKER_REFUSED, f"refused by the broker ({type(failure).__name__})")
        try:
            send([stub])
        except Exception as exc:
            raise Undelivered(left, exc) from exc
        refused.append(stub)
    return refused
