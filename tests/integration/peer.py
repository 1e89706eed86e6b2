"""A tiny echo peer for integration tests: ``serve`` echoes, ``send`` checks the echo.

python -m tests.integration.peer serve tcp|udp ADDRESS PORT
python -m tests.integration.peer send tcp|udp ADDRESS PORT NBYTES
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time


def serve(kind: str, address: str, port: int) -> None:
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        print("ready", flush=True)
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)
    listener = socket.create_server((address, port))
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def send(kind: str, address: str, port: int, size: int) -> int:
    payload = os.urandom(size)
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2)
        received = b""
        for offset in range(0, size, 1000):
            chunk = payload[offset : offset + 1000]
            for _ in range(3):  # UDP: a lost datagram is retried, never counted as success
                sock.sendto(chunk, (address, port))
                try:
                    echo, _ = sock.recvfrom(65535)
                    break
                except TimeoutError:
                    continue
            else:
                print(f"no echo for datagram at {offset}")
                return 1
            received += echo
    else:
        with socket.create_connection((address, port), timeout=10) as sock:
            # Read the echo while sending: a sender that reads only at the end
            # deadlocks once the echo fills its receive buffer and the peer's
            # send buffer, which a tunnel's small buffers make likely.
            chunks: list[bytes] = []
            reader = threading.Thread(target=read_until_closed, args=(sock, chunks), daemon=True)
            reader.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reader.join()
            received = b"".join(chunks)
    same = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    print(f"sent {size} received {len(received)} {'match' if same else 'MISMATCH'}")
    return 0 if same else 1


def read_until_closed(sock: socket.socket, chunks: list[bytes]) -> None:
    """Append what arrives on ``sock`` to ``chunks`` until the peer closes (or the timeout)."""
    with contextlib.suppress(TimeoutError):
        while data := sock.recv(65536):
            chunks.append(data)


def sink(address: str, port: int) -> None:
    """Accept one connection, read it to the end, print its length and sha256."""
    listener = socket.create_server((address, port))
    print("ready", flush=True)
    conn, _ = listener.accept()
    digest, total = hashlib.sha256(), 0
    with conn:
        while data := conn.recv(65536):
            digest.update(data)
            total += len(data)
    print(f"received {total} sha256 {digest.hexdigest()}", flush=True)


def stream(address: str, port: int, size: int, rate: int) -> int:
    """Send ``size`` random bytes at about ``rate`` bytes/s; print length and sha256."""
    digest = hashlib.sha256()
    chunk = max(rate // 20, 1024)
    with socket.create_connection((address, port), timeout=300) as sock:
        started = time.monotonic()
        for sent in range(0, size, chunk):
            data = os.urandom(min(chunk, size - sent))
            digest.update(data)
            sock.sendall(data)
            ahead = (sent + len(data)) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the sink to close: everything was read
    print(f"sent {size} sha256 {digest.hexdigest()}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    if sys.argv[1] == "stream":
        sys.exit(stream(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
    command, kind, address, port = sys.argv[1:5]
    if command == "serve":
        serve(kind, address, int(port))
    sys.exit(send(kind, address, int(port), int(sys.argv[5])))
