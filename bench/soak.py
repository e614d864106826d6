"""The soak scenario: many TLS clients for a long while, some coming and going.

`python -m bench --scenarios soak` runs it against authchat for 600 s with
500 clients: a fifth of them ("churners") log in and out at random the
whole time, the rest ("stayers") stay connected, and ten stayers send 50
messages a second between them. The workers are in soakload.py; this module
starts them, watches the server from /proc while they run, and judges:

  - delivery: every stayer received every message said before the end
    markers, in id order, with no gap, duplicate or step back, each sender's
    sequence in order, and all stayers the very same sequence; every churner
    session in order from its first message; nobody refused or cut off;
  - leaks: once everyone has gone, the server's threads and open file
    descriptors come back to what they were before anyone connected;
  - memory: resident memory after the warm-up stays flat to the end.

A failed check puts an `error` in the result, which fails the run.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

from .loadgen import Plan, join_workers, start_workers, wait_ready
from .servers import BENCH_PASSWORD, Authchat, ServerUnderTest
from .soakload import SoakPlan, run_soak_worker

WORKERS = 2
SENDERS = 10
PAYLOAD = 100
CHURN_FRACTION = 0.2            # of the clients, the churners
ONLINE_S = (1.0, 10.0)          # a churner stays this long, uniformly at random,
OFFLINE_S = (0.2, 2.0)          # then is away this long: about 15 logins a second at 500
DRAIN_S = 60.0                  # after the clock, for the end markers to reach everyone
SETUP_TIMEOUT_S = 300.0
REPORT_MARGIN_S = 60.0
# A closing session's longest bounded path in the server is a writer that takes
# its send timeout, eviction grace and linger (30 + 2 + 1 s): settling may take that.
SETTLE_TIMEOUT_S = 60.0
STEADY_S = 1.0                  # the baseline: counts unchanged this long
SETTLE_POLL_S = 0.1
WARM_UP_FRACTION = 0.2          # of the run, before memory must stay flat
WINDOW_FRACTION = 0.1           # of the run, the windows whose median RSS is compared
# Of the RSS after the warm-up. A leak of a kilobyte a login or a message
# exceeds it within the full run (7,000 logins and 24,000 messages after the
# warm-up); the churn's own noise, the few churners more or fewer online at a
# sample, stays far under it.
RSS_GROWTH_BOUND = 0.05
SERIES_POINTS = 60              # samples kept in the result, evenly spread
# What may stay once everyone has gone: the auth pool (server.py), which starts
# its threads on the first logins and keeps them, one per hashing slot (by
# default one per core), each with its own SQLite connection: a descriptor for
# the database and one for its write-ahead log. (The log's shared-memory index
# is one descriptor for the whole process, open before anyone connects.)
AUTH_THREADS = os.cpu_count() or 1
THREAD_TOLERANCE = AUTH_THREADS
FD_TOLERANCE = 2 * AUTH_THREADS


@dataclass(frozen=True)
class SoakSettings:
    clients: int = 500
    seconds: float = 600.0
    rate: float = 50.0          # messages a second, all senders together
    seed: int | None = None     # for the churn; None: a fresh one, recorded in the result


class Sample(NamedTuple):
    t: float  # seconds since the clock started
    rss_kib: int
    threads: int
    fds: int


def run_soak(server: Authchat, settings: SoakSettings) -> dict[str, Any]:
    """Run the soak against a started `server`; returns the result record."""
    seed = settings.seed if settings.seed is not None else random.randrange(2**32)
    baseline = _steady_sample(server)
    pipes, procs = start_workers(run_soak_worker, _plans(server, settings, seed))
    try:
        wait_ready(pipes, SETUP_TIMEOUT_S)
        connected = _sample(server, 0.0)
        for pipe in pipes:
            pipe.send("go")
        samples, reports = _watch(server, pipes, settings.seconds)
    finally:
        join_workers(procs)
    settle_started = time.monotonic()
    end = _settle(server, baseline)
    row: dict[str, Any] = {
        "seconds": settings.seconds, "rate": settings.rate, "seed": seed,
        "bcrypt_cost": server.bcrypt_cost,
        "threads_baseline": baseline.threads, "fds_baseline": baseline.fds,
        "rss_kib_baseline": baseline.rss_kib, "rss_kib_connected": connected.rss_kib,
        "threads_connected": connected.threads, "fds_connected": connected.fds,
        "threads_end": end.threads, "fds_end": end.fds, "rss_kib_after": end.rss_kib,
        "threads_tolerance": THREAD_TOLERANCE, "fds_tolerance": FD_TOLERANCE,
        "settle_s": round(time.monotonic() - settle_started, 2)}
    row.update(_delivery(reports, settings.clients))
    row.update(_memory(samples, settings.seconds))
    problems = _verdict(row)
    if problems:
        row["error"] = "; ".join(problems)
    return row


def _plans(server: ServerUnderTest, settings: SoakSettings, seed: int) -> list[SoakPlan]:
    churner_count = round(settings.clients * CHURN_FRACTION)
    stayers = list(range(settings.clients - churner_count))
    churners = list(range(len(stayers), settings.clients))
    senders = stayers[:SENDERS]
    per_sender = settings.rate / len(senders)
    plans = []
    for w in range(WORKERS):
        connection = Plan(driver=server.driver, host="127.0.0.1", port=server.port,
                          clients=stayers[w::WORKERS], senders=senders,
                          messages=int(settings.seconds * per_sender) + 2, rate=per_sender,
                          payload_bytes=PAYLOAD, tls=server.tls, password=BENCH_PASSWORD,
                          deadline_s=settings.seconds + DRAIN_S,
                          setup_threads=server.setup_threads)
        plans.append(SoakPlan(connection=connection, churners=churners[w::WORKERS],
                              seconds=settings.seconds, drain_s=DRAIN_S, seed=seed + w,
                              online_s=ONLINE_S, offline_s=OFFLINE_S))
    return plans


# -- watching the server ---------------------------------------------------------

def _sample(server: ServerUnderTest, t: float) -> Sample:
    return Sample(round(t, 1), server.memory_kib()["rss_kib"], server.thread_count(),
                  server.fd_count())


def _steady_sample(server: ServerUnderTest) -> Sample:
    """The server at rest: once its thread and fd counts have held still for STEADY_S.

    Just after start there may still be threads on their way up, and the
    connection the suite made to see it listening on its way out.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = _sample(server, 0.0)
    since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < STEADY_S:
        time.sleep(SETTLE_POLL_S)  # /proc cannot be waited on; bounded by the deadline
        now = _sample(server, 0.0)
        if (now.threads, now.fds) != (last.threads, last.fds):
            last, since = now, time.monotonic()
    return last


def _settle(server: ServerUnderTest, baseline: Sample) -> Sample:
    """The server once its counts are back within the tolerances, or at the timeout."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        now = _sample(server, 0.0)
        back = now.threads <= baseline.threads + THREAD_TOLERANCE and \
            now.fds <= baseline.fds + FD_TOLERANCE
        if back or time.monotonic() >= deadline:
            return now
        time.sleep(SETTLE_POLL_S)  # /proc cannot be waited on; bounded by the deadline


def _watch(server: ServerUnderTest, pipes: list[Connection],
           seconds: float) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Sample the server every few seconds until every worker has reported."""
    interval = min(5.0, max(1.0, seconds / 60))
    start = time.monotonic()
    deadline = start + seconds + DRAIN_S + REPORT_MARGIN_S
    samples: list[Sample] = []
    reports: list[dict[str, Any]] = []
    waiting = list(pipes)
    next_sample = start
    while waiting and time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            samples.append(_sample(server, time.monotonic() - start))
            next_sample += interval
        for ready in wait(waiting, max(0.0, next_sample - time.monotonic())):
            assert isinstance(ready, Connection)
            reports.append(ready.recv())
            waiting.remove(ready)
    if waiting:
        raise RuntimeError("a soak worker never reported")
    return samples, reports


# -- judging ----------------------------------------------------------------------

def _delivery(reports: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    sent = {sender: count for r in reports for sender, count in r["sent"].items()}
    expected_each = sum(count + 1 for count in sent.values())  # + its end marker
    stayers = [s for r in reports for s in r["stayers"]]
    churn = {key: sum(r["churn"][key] for r in reports) for key in reports[0]["churn"]}
    latencies = sorted(x for r in reports for x in r["latencies_ns"])
    return {
        "stayers": len(stayers), "churners": clients - len(stayers), "senders": len(sent),
        "messages_sent": sum(sent.values()), "delivered": sum(s["delivered"] for s in stayers),
        "expected": expected_each * len(stayers),
        "lost": sum(max(0, expected_each - s["delivered"]) for s in stayers),
        "duplicates": sum(s["duplicates"] for s in stayers),
        "reordered": sum(s["reordered"] for s in stayers),
        "sender_order_errors": sum(s["sender_errors"] for s in stayers),
        "sequences_identical": len({s["digest"] for s in stayers}) == 1,
        "timed_out": any(r["timed_out"] for r in reports),
        "stayers_dropped": churn.pop("stayers_dropped"), "reconnects": churn.pop("logins"),
        **{f"churn_{k}": v for k, v in churn.items()},
        "generator_cpu_s": round(sum(r["worker_cpu_s"] for r in reports), 3),
        **_latency_ms(latencies)}


def _latency_ms(values: list[int]) -> dict[str, float]:
    if not values:
        return {}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] / 1e6, 2)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(values[-1] / 1e6, 2)}


def _memory(samples: list[Sample], seconds: float) -> dict[str, Any]:
    """RSS after the warm-up against RSS at the end, and a summary of every sample."""
    load = [s for s in samples if s.t <= seconds] or samples
    warm_end = WARM_UP_FRACTION * seconds
    window = WINDOW_FRACTION * seconds
    warm = statistics.median(_window(load, warm_end, warm_end + window))
    end = statistics.median(_window(load, seconds - window, seconds))
    step = max(1, len(samples) // SERIES_POINTS)
    return {"rss_kib_warm": round(warm), "rss_kib_end": round(end),
            "rss_growth_kib": round(end - warm),
            "rss_growth_bound_kib": round(RSS_GROWTH_BOUND * warm),
            **_spread("rss_kib", [s.rss_kib for s in load]),
            **_spread("threads", [s.threads for s in load]),
            **_spread("fds", [s.fds for s in load]),
            "samples": len(samples), "series": [list(s) for s in samples[::step]]}


def _window(samples: list[Sample], start: float, end: float) -> list[int]:
    """RSS of the samples taken in (start, end]; in a short run, the nearest one to end."""
    inside = [s.rss_kib for s in samples if start < s.t <= end]
    return inside or [min(samples, key=lambda s: abs(s.t - end)).rss_kib]


def _spread(name: str, values: list[int]) -> dict[str, float]:
    return {f"{name}_min": min(values), f"{name}_median": statistics.median(values),
            f"{name}_max": max(values)}


def _verdict(row: dict[str, Any]) -> list[str]:
    """What the soak found wrong, in words; empty when every check passed."""
    problems = []
    faults = {k: row[k] for k in ("lost", "duplicates", "reordered", "sender_order_errors",
                                  "stayers_dropped", "churn_session_errors",
                                  "churn_login_failures", "churn_closed_by_server",
                                  "churn_quit_timeouts") if row[k]}
    if faults:
        problems.append("delivery: " + ", ".join(f"{k}={v}" for k, v in faults.items()))
    if not row["sequences_identical"]:
        problems.append("delivery: the stayers did not all see the same sequence")
    if row["timed_out"]:
        problems.append(f"delivery: end markers still missing {DRAIN_S:g} s after the clock")
    for name in ("threads", "fds"):
        allowed = row[f"{name}_baseline"] + row[f"{name}_tolerance"]
        if row[f"{name}_end"] > allowed:
            problems.append(f"leak: {row[f'{name}_end']} {name} after everyone left, "
                            f"baseline {row[f'{name}_baseline']} (at most {allowed} allowed)")
    if row["rss_growth_kib"] > row["rss_growth_bound_kib"]:
        problems.append(f"memory: RSS grew {row['rss_growth_kib']} KiB after the warm-up "
                        f"(bound {row['rss_growth_bound_kib']} KiB)")
    return problems
