"""Chunk packing before issue 20, after it, and now, in one run: CPU per message and broker bytes
per body byte.

Before: a JSON list of message objects (``\\uXXXX`` escapes), sealed (Fernet, base64), and the
task's JSON base64-encoded again by kombu's Redis transport. Issue 20: a JSON header and the raw
UTF-8 bodies (format 2), sealed as Fernet text inside the task's JSON. Now (issue 24, "after"):
a marshal header and the raw bodies (etl.model.records, format 3) sealed as AES-GCM bytes and
kept in Redis as a value of its own, the task carrying only its key (a constant few hundred
bytes, left out here).

    .venv/bin/python -m bench.chunk_codec [--rounds N]

Prints one table; every figure is a ratio or a time measured in this run (the bodies: the shared
samples' shape, ~200 ASCII bytes; and the same count of 4 KiB emoji bodies).
"""

import argparse
import base64
import json
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from etl.crypto.sealing import Sealer, new_key
from etl.model import records
from etl.model.records import Message
from etl.ops import samples

FIELDS = ("message_id", "receipt_handle", "body", "sent_timestamp_ms", "receive_count", "received_at")


def pack_before(messages: list[Message], sealer: Sealer) -> str:
    sealed = sealer.seal(json.dumps([{f: getattr(m, f) for f in FIELDS} for m in messages]).encode())
    task_body = json.dumps([[sealed], {}, {"callbacks": None}])
    return base64.b64encode(task_body.encode()).decode()  # kombu's redis body_encoding=base64


def unpack_before(wire: str, sealer: Sealer) -> list[Message]:
    sealed = json.loads(base64.b64decode(wire))[0][0]
    return [Message(**m) for m in json.loads(sealer.open(sealed).decode())]


def pack_issue20(messages: list[Message], sealer: Sealer) -> str:
    bodies = [m.body.encode("utf-8", "surrogatepass") for m in messages]
    head = json.dumps(
        [
            [m.message_id, m.receipt_handle, m.sent_timestamp_ms, m.receive_count, m.received_at, len(b), None]
            for m, b in zip(messages, bodies, strict=True)
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8", "surrogatepass")
    sealed = sealer.seal(b"".join([b"\x02", len(head).to_bytes(4, "big"), head, *bodies]))
    return json.dumps([[sealed], {}, {"callbacks": None}])


def unpack_issue20(wire: str, sealer: Sealer) -> list[Message]:
    return records.unpack_chunk(json.loads(wire)[0][0], sealer)  # format 2 still opens


def pack_after(messages: list[Message], sealer: Sealer) -> bytes:
    return records.pack_chunk(messages, sealer)


def unpack_after(wire: bytes, sealer: Sealer) -> list[Message]:
    return records.unpack_chunk(wire, sealer)


def per_message_us(fn: Callable[[], object], messages: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best / messages * 1e6


def measure(chunk_size: int = 1000, rounds: int = 20) -> dict[str, dict[str, list[float]]]:
    """Per body set, before and after: [pack us/msg, unpack us/msg, wire bytes per body byte]."""
    sealer = Sealer([new_key()])
    rng = random.Random(20)
    handle = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(380))  # SQS-sized
    sets = {
        "samples (ASCII)": samples.generate(chunk_size, seed=20),
        "4 KiB emoji": ["\U0001f600" * 1024] * chunk_size,
    }
    out: dict[str, dict[str, list[float]]] = {}
    for name, bodies in sets.items():
        chunk = [Message(f"id-{i:06d}-{rng.random()}", handle, b, 1_700_000_000_000, 1) for i, b in enumerate(bodies)]
        body_bytes = sum(len(b.encode()) for b in bodies)
        rows: dict[str, list[float]] = {}
        variants: list[tuple[str, Callable[..., Any], Callable[..., list[Message]]]] = [
            ("before", pack_before, unpack_before),
            ("issue 20", pack_issue20, unpack_issue20),
            ("after", pack_after, unpack_after),
        ]
        for label, pack, unpack in variants:
            wire = pack(chunk, sealer)
            assert unpack(wire, sealer) == chunk
            rows[label] = [
                per_message_us(partial(pack, chunk, sealer), len(chunk), rounds),
                per_message_us(partial(unpack, wire, sealer), len(chunk), rounds),
                len(wire) / body_bytes,
            ]
        out[name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    print(f"chunk of {args.chunk} messages, best of {args.rounds} rounds, one process")
    print(f"{'bodies':<16} {'':>8} {'pack us/msg':>12} {'unpack us/msg':>14} {'wire bytes/body byte':>21}")
    for name, rows in measure(args.chunk, args.rounds).items():
        for label in ("before", "issue 20", "after"):
            r = rows[label]
            print(f"{name:<16} {label:>8} {r[0]:>12.2f} {r[1]:>14.2f} {r[2]:>21.2f}")
        b, a = rows["before"], rows["after"]
        print(f"{name:<16} {'after/before':>7} {a[0] / b[0]:>7.2f}x {a[1] / b[1]:>13.2f}x {a[2] / b[2]:>20.2f}x")


if __name__ == "__main__":
    main()
