"""The classic toy chat server authchat grew from, kept as the baseline.

One thread per client; every received line is sent to every client with
sendall, in a loop, under one lock. No authentication, no limits. Its flaw is
the point of comparison: one client that stops reading blocks that sendall,
and with it the lock and the whole room.

Run: python -m bench.toy_server PORT
"""

from __future__ import annotations

import socket
import sys
import threading

clients: list[socket.socket] = []
lock = threading.Lock()


def handle(conn: socket.socket) -> None:
    with lock:
        clients.append(conn)
    reader = conn.makefile("rb")
    try:
        for line in reader:
            with lock:
                for client in clients:
                    try:
                        client.sendall(line)
                    except OSError:
                        pass
    except OSError:
        pass
    finally:
        with lock:
            clients.remove(conn)
        conn.close()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = socket.create_server(("127.0.0.1", port), backlog=1024)
    print(f"listening on 127.0.0.1 port {server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
