"""A minimal keep-alive HTTP/1.1 client connection for the lean SQS path (etl/wire/lean.py).

A request is written in one ``sendall``; the answer is parsed by hand (status line, headers,
Content-Length or chunked body). http.client parses headers with the email package and urllib3
adds its own layers: on the three hot SQS calls they cost more CPU than the call itself. TLS
comes from the caller's ``ssl.SSLContext``. No logging: bodies hold PII.
"""

import contextlib
import socket
import ssl


class Connection:
    """One keep-alive HTTP/1.1 connection: a request written at once, the answer parsed by hand."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float, read_timeout: float):
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        sock.settimeout(read_timeout)
        self.sock = sock
        self.read_timeout = read_timeout
        self.buf = bytearray()  # appended to in place: a large answer costs no copy per read
        self.reusable = True

    def send(self, request: bytes) -> None:
        """Write one request, not waiting for its answer (read_response reads it)."""
        self.sock.sendall(request)

    def close(self) -> None:
        self.reusable = False
        with contextlib.suppress(OSError):
            self.sock.close()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed by the server")
        self.buf += data

    def exchange(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one request; (status, headers with lower-case names, body)."""
        self.send(request)
        return self.read_response()

    def read_response(self, within: float | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
        """The answer to the request sent last (blocking): each read waits up to the read timeout;
        with ``within``, the answer must start within that many seconds (at least 1 ms: an answer
        already here is read), and the rest of it is read under the read timeout, as it streams in."""
        if within is not None and not self.buf:
            self.sock.settimeout(max(within, 0.001))
            try:
                self._more()
            finally:
                self.sock.settimeout(self.read_timeout)
        return self._response()

    def _response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._more()
        lines = bytes(self.buf[:end]).split(b"\r\n")
        self.buf = self.buf[end + 4 :]
        version, status = lines[0].split(b" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = self._chunked()
        elif b"content-length" in headers:
            length = _length(headers[b"content-length"], 10)
            while len(self.buf) < length:
                self._more()
            body, self.buf = bytes(self.buf[:length]), self.buf[length:]
        else:  # body until the server closes
            try:
                while True:
                    self._more()
            except ConnectionResetError:
                pass
            body, self.buf = bytes(self.buf), bytearray()
            self.reusable = False
        if headers.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0":
            self.reusable = False
        if self.buf:  # more than the answer said it holds: the next answer cannot be told apart
            self.reusable = False
        return int(status), headers, body

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            while (eol := self.buf.find(b"\r\n")) < 0:
                self._more()
            size = _length(bytes(self.buf[:eol]).split(b";", 1)[0].strip(b" \t"), 16)
            self.buf = self.buf[eol + 2 :]
            while len(self.buf) < size + 2:
                self._more()
            if size == 0:  # no trailers expected from SQS: the final CRLF ends the body
                while not self.buf.startswith(b"\r\n"):
                    while (eol := self.buf.find(b"\r\n")) < 0:
                        self._more()
                    self.buf = self.buf[eol + 2 :]
                self.buf = self.buf[2:]
                return b"".join(parts)
            parts.append(bytes(self.buf[:size]))
            self.buf = self.buf[size + 2 :]


_DIGITS = {10: frozenset(b"0123456789"), 16: frozenset(b"0123456789abcdefABCDEF")}


def _length(raw: bytes, base: int) -> int:
    """A Content-Length (base 10) or chunk size (base 16): digits only. ``int`` alone would take a
    sign, a ``0x`` prefix or underscores, and a negative size would make ``_chunked`` copy the
    buffer over and over. ValueError otherwise (the lean client's ConnectionClosedError)."""
    if not raw or not _DIGITS[base].issuperset(raw):
        raise ValueError(f"malformed length in an HTTP answer ({len(raw)} bytes)")
    return int(raw, base)
