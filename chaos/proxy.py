"""A TCP proxy on loopback that can be switched off, to make an SQS endpoint unreachable."""

import socket
import struct
import threading
from contextlib import suppress


class Proxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>; ``down()`` cuts every connection.

    The port is the kernel's choice (bind to port 0) and stays bound until ``close()``: a port
    released while the proxy is down could be taken by another run, and the proxy would then
    come back on nothing (or forward the other run's traffic). While down, every connection is
    accepted and reset at once, as an unreachable endpoint is to a client.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._up = False
        threading.Thread(target=self._accept, daemon=True).start()

    def up(self) -> None:
        self._up = True

    def down(self) -> None:
        """Refuse new connections and cut the open ones (as a network partition would)."""
        with self._lock:
            self._up = False
            for s in self._sockets:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def close(self) -> None:
        """Cut everything and release the port."""
        self.down()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up:
                # linger 0: close with a reset, so the client sees the connection refused/cut at once
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
