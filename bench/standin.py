"""An HTTP-level SQS stand-in for benchmarks: the JSON protocol botocore speaks, fixed latency.

`python -m bench.standin --port P [--latency-ms 15] [--total N]` serves, on HTTP/1.1 with
keep-alive, the calls etl makes (``X-Amz-Target: AmazonSQS.<Operation>``, content type
``application/x-amz-json-1.0``): ReceiveMessage, DeleteMessageBatch,
ChangeMessageVisibilityBatch, GetQueueAttributes, SendMessageBatch. Every answer goes out
``latency`` after the request (AWS from inside a region); the client's CPU is all real: it
builds, signs, sends and parses every call as it would against AWS.

It does as little work as it can, so the benchmark's CPU figures are the client's: one asyncio
event loop, requests parsed by hand, response bodies assembled from pre-encoded fragments, no
signature checks and no storage (messages are generated on demand from a pool of realistic
bodies, up to ``--total``; deletes always succeed). Its own CPU is reported by the benchmark.

Two extra targets serve the benchmark itself: ``Bench.Stats`` (calls per operation, messages
issued) and ``Bench.Reset`` (zero the counters; a JSON body may set ``total`` and ``rate``).

With a ``rate`` (messages per second) the queue fills as a producer would fill it: message i is
sent at reset time + i / rate (its SentTimestamp) and cannot be received before; without one,
every message is there at once and is stamped when it is received.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections import Counter
from typing import Any

from etl.ops import samples

TARGET_PREFIX = b"AmazonSQS."
# SQS's own identifiers are long, and they travel: in every answer, in each chunk on the broker,
# in each delete. A MessageId is a 36-character UUID; a receipt handle from AWS is ~380
# characters of base64 ("AQEB..."). Short stand-ins (``rh-7``) made chunks lighter than they are
# against SQS, so the byte cap (ETL_CHUNK_MAX_BYTES) never cut them where it does in production.
HANDLE_PAD = base64.b64encode(hashlib.sha512(b"etl").digest() * 5)[:360]
STATS = "Bench.Stats"
RESET = "Bench.Reset"


class State:
    """What the stand-in counts; one per server process."""

    def __init__(self, total: int | None, latency: float) -> None:
        self.total = total
        self.latency = latency
        self.rate: float | None = None
        self.started = time.time()
        self.issued = 0
        self.calls: Counter[str] = Counter()
        self.prefix = uuid.uuid4().hex[:10]
        # Each body pre-encoded once: '"MD5OfBody":"…","Body":"…"' with the JSON escaping done.
        self.fragments = [
            f'"MD5OfBody":"{hashlib.md5(b.encode("utf-8", "surrogatepass")).hexdigest()}","Body":{json.dumps(b)}'.encode()  # noqa: S324
            for b in samples.generate(1000, seed=42, malformed_rate=0.01)
        ]

    def receive(self, request: dict[str, Any]) -> tuple[bytes, float]:
        n = int(request.get("MaxNumberOfMessages", 1))
        if self.total is not None:
            n = max(0, min(n, self.total - self.issued))
        long_poll = float(request.get("WaitTimeSeconds", 0))
        wait = self.latency
        if self.rate:
            due = int((time.time() - self.started) * self.rate)
            wanted, n = n, max(0, min(n, due - self.issued))
            if n == 0 and long_poll > 0 and wanted > 0:
                # a long poll answers as soon as a message arrives, with that message, as SQS does
                # (it does not wait to fill the batch); empty after WaitTimeSeconds if none does
                next_due = self.started + (self.issued + 1) / self.rate - time.time()
                if next_due <= long_poll:
                    n, wait = 1, max(self.latency, next_due)
                else:
                    wait = max(self.latency, long_poll)
        elif n == 0:
            wait = max(self.latency, long_poll)
        first = self.issued
        self.issued += n
        now = str(int(time.time() * 1000)).encode()
        rate, started = self.rate, self.started * 1000
        frags = self.fragments
        prefix = self.prefix.encode()
        items = [
            b'{"MessageId":"%s-%025d","ReceiptHandle":"AQEB%s%016d",%s,"Attributes":{"SentTimestamp":"%s","ApproximateReceiveCount":"1"}}'
            % (
                prefix,
                i,
                HANDLE_PAD,
                i,
                frags[i % len(frags)],
                str(int(started + i * 1000 / rate)).encode() if rate else now,
            )
            for i in range(first, first + n)
        ]
        return b'{"Messages":[' + b",".join(items) + b"]}", wait

    def answer(self, target: str, body: bytes) -> tuple[bytes, float]:
        """(response body, delay) for one call."""
        self.calls[target] += 1
        request: dict[str, Any] = json.loads(body) if body else {}
        if target == "ReceiveMessage":
            return self.receive(request)
        if target in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch", "SendMessageBatch"):
            entries = request.get("Entries", [])
            if target == "SendMessageBatch":
                ok = [{"Id": e["Id"], "MessageId": uuid.uuid4().hex, "MD5OfMessageBody": ""} for e in entries]
            else:
                ok = [{"Id": e["Id"]} for e in entries]
            return json.dumps({"Successful": ok, "Failed": []}).encode(), self.latency
        if target == "GetQueueAttributes":
            attrs = {k: "0" for k in request.get("AttributeNames", [])}
            return json.dumps({"Attributes": attrs}).encode(), self.latency
        if target == STATS:
            self.calls[target] -= 1
            calls = {k: v for k, v in self.calls.items() if v and not k.startswith("Bench.")}
            return json.dumps({"calls": calls, "issued": self.issued}).encode(), 0
        if target == RESET:
            self.calls.clear()
            self.issued = 0
            if "total" in request:
                self.total = request["total"]
            self.rate = request.get("rate")
            self.started = time.time()
            return b"{}", 0
        self.calls[target] -= 1
        raise KeyError(target)


def _response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: standin\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (status, extra, len(body), body)
    )


class Protocol(asyncio.Protocol):
    """One keep-alive connection: requests parsed by hand, answers scheduled ``latency`` later."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            target = ""
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-amz-target":
                    target = value.strip().removeprefix(TARGET_PREFIX).decode()
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
            self.handle(target, body)

    def handle(self, target: str, body: bytes) -> None:
        try:
            payload, delay = self.state.answer(target, body)
            response = _response(b"200 OK", payload)
        except (KeyError, ValueError):
            payload = json.dumps({"__type": "com.amazonaws.sqs#InvalidAction", "message": "not served"}).encode()
            response, delay = _response(b"400 Bad Request", payload), 0
        if delay:
            asyncio.get_running_loop().call_later(delay, self.write, response)
        else:
            self.write(response)

    def write(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, state: State) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Protocol(state), "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=15.0)
    parser.add_argument("--total", type=int, default=None, help="messages to issue in all (default: unlimited)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, State(args.total, args.latency_ms / 1000)))


if __name__ == "__main__":
    main()
