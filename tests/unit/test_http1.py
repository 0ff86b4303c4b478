"""etl.wire.http1.Connection over a real local socket: ``within`` bounds only the wait for an
answer to start; an answer that started streams in under the read timeout (an outside review:
bounding every read by ``within`` dropped answers that arrived in time, behind a stalled call)."""

import socket
import threading
import time

import pytest

from etl.wire import http1

BODY = b'{"Successful":[],"Failed":[]}' * 200


def server(*steps: tuple[float, bytes]) -> tuple[int, threading.Thread]:
    """A server answering one request: each step's bytes after its delay (s), then closing."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        try:
            conn.recv(65536)
            for delay, data in steps:
                time.sleep(delay)
                conn.sendall(data)
        except OSError:  # the client gave up and closed: expected in the timeout test
            pass
        finally:
            conn.close()
            listener.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread


def serve(first_after: float, rest_after: float) -> tuple[int, threading.Thread]:
    """The status line after ``first_after`` s, the rest of the answer ``rest_after`` s later."""
    rest = b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    return server((first_after, b"HTTP/1.1 200 OK\r\n"), (rest_after, rest), (0.5, b""))


def test_an_answer_that_started_in_time_is_read_whole_under_the_read_timeout() -> None:
    port, thread = serve(first_after=0.0, rest_after=0.4)
    conn = http1.Connection("127.0.0.1", port, None, 2, 2.0)
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    time.sleep(0.1)  # the answer has started
    status, _, body = conn.read_response(within=0.05)
    assert status == 200 and body == BODY
    assert conn.sock.gettimeout() == 2.0
    thread.join()


def test_an_answer_that_does_not_start_within_the_bound_times_out() -> None:
    port, thread = serve(first_after=1.0, rest_after=0.0)
    conn = http1.Connection("127.0.0.1", port, None, 2, 5.0)
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.read_response(within=0.2)
    assert time.monotonic() - started < 0.9
    assert conn.sock.gettimeout() == 5.0
    conn.close()
    thread.join()


def answering(answer: bytes) -> int:
    """A server that answers one request with ``answer`` and closes."""
    return server((0, answer))[0]


@pytest.mark.parametrize(
    "head",
    [
        b"Transfer-Encoding: chunked\r\n\r\n" + b"-1\r\nX" * 2000,  # an outside review: copied the buffer per byte
        b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
        b"Content-Length: -5\r\n\r\nhello",
        b"Content-Length: 1_0\r\n\r\nhello",
    ],
)
def test_a_malformed_length_is_refused(head: bytes) -> None:
    conn = http1.Connection("127.0.0.1", answering(b"HTTP/1.1 200 OK\r\n" + head), None, 2, 2.0)
    with pytest.raises(ValueError, match="malformed length"):
        conn.exchange(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")


def test_chunk_sizes_in_either_case_with_extensions_are_read() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer += b"A;x=1\r\n0123456789\r\nb \r\nabcdefghijk\r\n0\r\n\r\n"
    conn = http1.Connection("127.0.0.1", answering(answer), None, 2, 2.0)
    assert conn.exchange(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[2] == b"0123456789abcdefghijk"
