"""The logins scenario: how close authchat gets to the machine's bcrypt limit,
and what a login flood does to the room for people already in it."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import statistics
import threading
import time
from typing import Any

import bcrypt

from .drivers import account
from .servers import BENCH_PASSWORD, Authchat

FLOOD_PROCESSES = 2
THREADS_PER_PROCESS = 4
PROBE_INTERVAL_S = 0.02


def bcrypt_limit(cost: int) -> float:
    """Hashes per second this machine can do at `cost`: cores / one hash's time."""
    salt = bcrypt.gensalt(cost)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        bcrypt.hashpw(b"x" * 44, salt)
        times.append(time.perf_counter() - started)
    return (os.cpu_count() or 1) / statistics.median(times)


def _login_once(port: int, number: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # hello
        login = {"type": "login", "username": account(number), "password": BENCH_PASSWORD}
        sock.sendall(json.dumps(login).encode() + b"\n")
        reply = json.loads(reader.readline())
        sock.sendall(b'{"type":"quit"}\n')
        return bool(reply.get("type") == "welcome")


def _flood(port: int, first_user: int, seconds: float, queue: Any) -> None:
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop(user: int) -> None:
        while time.monotonic() < stop_at:
            if _login_once(port, user):
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=loop, args=(first_user + t,))
               for t in range(THREADS_PER_PROCESS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    queue.put(done[0])


def _probe(port: int, seconds: float) -> list[float]:
    """Latencies of a message between two logged-in users, every 20 ms."""
    def connect(user: int) -> tuple[socket.socket, Any]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(json.dumps({"type": "login", "username": account(user),
                                 "password": BENCH_PASSWORD}).encode() + b"\n")
        while json.loads(reader.readline())["type"] != "welcome":
            pass
        return sock, reader

    sender, _ = connect(0)
    receiver, reader = connect(1)
    latencies = []
    stop_at = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < stop_at:
        sent = time.perf_counter()
        sender.sendall(json.dumps({"type": "say", "text": f"probe {seq}"}).encode() + b"\n")
        while True:
            frame = json.loads(reader.readline())
            if frame.get("text") == f"probe {seq}":
                break
        latencies.append((time.perf_counter() - sent) * 1000)
        seq += 1
        time.sleep(PROBE_INTERVAL_S)  # a steady, light chat: one message per 20 ms
    sender.close()
    receiver.close()
    return latencies


def measure_logins(seconds: float, cost: int) -> dict[str, Any]:
    server = Authchat(bcrypt_cost=cost)
    users = 2 + FLOOD_PROCESSES * THREADS_PER_PROCESS
    try:
        server.start(users)
        limit = bcrypt_limit(cost)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        cpu_before = server.cpu_seconds()
        flooders = [context.Process(target=_flood, args=(server.port, 2 + p * THREADS_PER_PROCESS,
                                                         seconds, queue), daemon=True)
                    for p in range(FLOOD_PROCESSES)]
        started = time.monotonic()
        for proc in flooders:
            proc.start()
        latencies = sorted(_probe(server.port, seconds))
        done = sum(queue.get(timeout=seconds + 120) for _ in flooders)
        elapsed = time.monotonic() - started
        for proc in flooders:
            proc.join(30)
        rate = done / elapsed
        return {"logins_per_s": round(rate, 2), "bcrypt_limit_per_s": round(limit, 2),
                "fraction_of_limit": round(rate / limit, 3), "bcrypt_cost": cost,
                "room_p50_ms": round(latencies[len(latencies) // 2], 2),
                "room_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
                "server_cpu_s": round(server.cpu_seconds() - cpu_before, 3),
                **server.memory_kib()}
    finally:
        server.stop()
