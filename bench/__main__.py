"""The benchmark suite: `python -m bench [--smoke] [--runs N] [--scenarios ...]`.

Scenarios (see docs/benchmarks.md for what each measures and the figures):
  fanout       N clients in one room, S senders x M messages, every client reads all
  latency      N clients, a fixed total offered rate; send-to-receive latency
  connections  idle logged-in clients held, memory per connection, room still works
  logins       login throughput at the default bcrypt cost vs the machine's bcrypt limit
  soak         only when asked for, and once: authchat over TLS for 10 minutes, clients
               coming and going; fails on any lost or reordered message, a thread or
               descriptor leak, or memory growth after the warm-up (bench/soak.py)

Every server (authchat plain and TLS, the toy baseline, ngIRCd and InspIRCd when
installed) runs the identical workload, interleaved, `--runs` times; results go
to a JSON-lines file and a table of medians and ratios to each baseline.
`--smoke` is the short correctness-only version CI runs: it fails on any lost
or reordered message, and reports no timings.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authchat.config import AuthConfig

from .loadgen import Plan, join_workers, run_worker, start_workers, wait_ready
from .servers import BENCH_PASSWORD, Authchat, Inspircd, Ngircd, ServerUnderTest, Toy
from .soak import SoakSettings, run_soak

RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = 2
SENDERS = 10
IN_FLIGHT = 64
PAYLOAD = 100
READY_TIMEOUT_S = 300.0


def run_load(server: ServerUnderTest, clients: int, senders: int, messages: int, *,
             rate: float | None = None, idle: bool = False, deadline_s: float = 120.0,
             on_ready: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Drive `server` with worker processes; returns the merged measurements."""
    numbers = list(range(clients))
    sender_numbers = numbers[:senders]
    plans = [Plan(driver=server.driver, host="127.0.0.1", port=server.port, clients=mine,
                  senders=sender_numbers, messages=messages, in_flight=IN_FLIGHT, rate=rate,
                  payload_bytes=PAYLOAD, tls=server.tls, password=BENCH_PASSWORD,
                  deadline_s=deadline_s, idle=idle, setup_threads=server.setup_threads)
             for mine in (numbers[w::WORKERS] for w in range(WORKERS)) if mine]
    pipes, procs = start_workers(run_worker, plans)
    try:
        wait_ready(pipes, READY_TIMEOUT_S)
        extra: dict[str, Any] = {}
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        for pipe in pipes:
            pipe.send("go")
        if idle:
            for pipe in pipes:
                pipe.recv()  # holding
            extra.update(on_ready() if on_ready else {})
            for pipe in pipes:
                pipe.send("stop")
        results = []
        for pipe in pipes:
            if not pipe.poll(deadline_s + 60):
                raise RuntimeError("a load worker never reported")
            results.append(pipe.recv())
        server_cpu = server.cpu_seconds() - cpu_before
    finally:
        join_workers(procs)
    merged: dict[str, Any] = {"server_cpu_s": round(server_cpu, 3), **server.memory_kib(),
                              **extra, "wall_s": round(time.monotonic() - started, 3)}
    merged["generator_cpu_s"] = round(sum(r["worker_cpu_s"] for r in results), 3)
    if not idle:
        latencies = sorted(x for r in results for x in r["latencies_ns"])
        elapsed = max(r["elapsed_s"] for r in results)
        merged.update(
            received=sum(r["received"] for r in results),
            expected=sum(r["expected"] for r in results),
            lost=sum(r["lost"] for r in results), reordered=sum(r["reordered"] for r in results),
            timed_out=any(r["timed_out"] for r in results), elapsed_s=round(elapsed, 3),
            deliveries_per_s=round(sum(r["received"] for r in results) / elapsed),
            **_percentiles(latencies))
    return merged


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] / 1e6

    return {"p50_ms": round(pick(0.50), 2), "p99_ms": round(pick(0.99), 2),
            "max_ms": round(values[-1] / 1e6, 2)}


# -- scenarios ----------------------------------------------------------------------

def fanout(factory: Callable[[], ServerUnderTest], n: int, smoke: bool) -> dict[str, Any]:
    messages = (20 if smoke else max(20, 300_000 // n))
    return _with_server(factory, n, lambda s: run_load(s, n, min(SENDERS, n), messages))


def latency(factory: Callable[[], ServerUnderTest], n: int, smoke: bool) -> dict[str, Any]:
    total_rate, seconds = (50.0, 2) if smoke else (200.0, 10)
    senders = min(SENDERS, n)
    per_sender = total_rate / senders
    return _with_server(factory, n, lambda s: run_load(
        s, n, senders, int(per_sender * seconds), rate=per_sender))


def connections(factory: Callable[[], ServerUnderTest], n: int, smoke: bool) -> dict[str, Any]:
    def measure(server: ServerUnderTest) -> dict[str, Any]:
        baseline = server.memory_kib()["rss_kib"]

        def held() -> dict[str, Any]:
            rss = server.memory_kib()["rss_kib"]
            room = _room_check(server, n)
            return {"held": n, "rss_kib_held": rss,
                    "kib_per_connection": round((rss - baseline) / n, 2),
                    "room_lost": room["lost"], "room_received": room["received"],
                    "room_expected": room["expected"]}

        return run_load(server, n, 0, 0, idle=True, on_ready=held, deadline_s=600)
    return _with_server(factory, n + 2, measure)


def _room_check(server: ServerUnderTest, held: int) -> dict[str, Any]:
    """Two more clients (client numbers held and held + 1) exchange messages in the full room."""
    plan_numbers = [held, held + 1]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    plan = Plan(driver=server.driver, host="127.0.0.1", port=server.port, clients=plan_numbers,
                senders=[held], messages=10, tls=server.tls, password=BENCH_PASSWORD,
                deadline_s=60, setup_threads=server.setup_threads)
    proc = context.Process(target=run_worker, args=(plan, child), daemon=True)
    proc.start()
    try:
        assert parent.poll(READY_TIMEOUT_S) and "ready" in parent.recv()
        parent.send("go")
        assert parent.poll(120)
        return dict(parent.recv())
    finally:
        proc.join(10)


def logins(factory: Callable[[], ServerUnderTest], n: int, smoke: bool) -> dict[str, Any]:
    from .logins import measure_logins

    return measure_logins(seconds=3 if smoke else 15,
                          cost=4 if smoke else AuthConfig().bcrypt_cost)  # the default


def soak(factory: Callable[[], ServerUnderTest], n: int, smoke: bool, *,
         settings: SoakSettings) -> dict[str, Any]:
    def body(server: ServerUnderTest) -> dict[str, Any]:
        assert isinstance(server, Authchat)
        return run_soak(server, settings)
    return _with_server(factory, settings.clients, body)


def _with_server(factory: Callable[[], ServerUnderTest], users: int,
                 body: Callable[[ServerUnderTest], dict[str, Any]]) -> dict[str, Any]:
    server = factory()
    try:
        server.start(users)
        return body(server)
    finally:
        server.stop()


SCENARIOS: dict[str, tuple[Callable[..., dict[str, Any]], list[int], list[int]]] = {
    # name: (function, sizes for a full run, sizes for --smoke)
    "fanout": (fanout, [10, 100, 1000], [10, 50]),
    "latency": (latency, [1000], [50]),
    "connections": (connections, [5000], [200]),
    "logins": (logins, [0], [0]),
    "soak": (soak, [SoakSettings.clients], [SoakSettings.clients]),  # sized by --soak-clients
}
ON_REQUEST = {"soak"}  # too long to be part of every run


def scenario_for(name: str, args: argparse.Namespace) -> tuple[Callable[..., dict[str, Any]],
                                                                 list[int]]:
    """The scenario's function, and the client counts to run it at."""
    function, full, smoke_sizes = SCENARIOS[name]
    if name == "soak":
        settings = SoakSettings(clients=args.soak_clients, seconds=args.soak_seconds,
                                rate=args.soak_rate, seed=args.soak_seed)
        return functools.partial(soak, settings=settings), [settings.clients]
    return function, smoke_sizes if args.smoke else full


def servers_for(scenario: str, smoke: bool,
                wanted: list[str] | None = None) -> list[tuple[str, Callable[[], ServerUnderTest]]]:
    found: list[tuple[str, Callable[[], ServerUnderTest]]] = [
        ("authchat", lambda: Authchat()), ("authchat-tls", lambda: Authchat(tls=True))]
    if scenario == "soak":  # its checks need authchat's message ids; TLS unless asked
        return [server for server in found if server[0] in (wanted or ["authchat-tls"])]
    if scenario == "logins":
        return found[:1]
    if scenario in ("latency", "connections"):
        found = found[:1]
    if scenario in ("fanout", "latency"):  # what storing every message costs
        found.append(("authchat-nohist", lambda: Authchat(history=False)))
    found.append(("toy", Toy))
    for cls in (Ngircd, Inspircd):
        if cls.installed():
            found.append((cls.name, cls))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="short, correctness only")
    parser.add_argument("--runs", type=int, default=3, help="runs of everything (default 3)")
    parser.add_argument("--scenarios", nargs="*",
                        default=[s for s in SCENARIOS if s not in ON_REQUEST],
                        choices=list(SCENARIOS), help="default: all but soak")
    parser.add_argument("--servers", nargs="*", help="only these servers")
    parser.add_argument("--sizes", nargs="*", type=int, help="only these client counts")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="directory for the JSON-lines file (default bench/results)")
    defaults = SoakSettings()
    group = parser.add_argument_group("soak")
    group.add_argument("--soak-seconds", type=float, default=defaults.seconds,
                       help=f"how long the clock runs (default {defaults.seconds:g})")
    group.add_argument("--soak-clients", type=int, default=defaults.clients,
                       help=f"clients, a fifth of them churning (default {defaults.clients})")
    group.add_argument("--soak-rate", type=float, default=defaults.rate,
                       help=f"messages a second, all senders together (default {defaults.rate:g})")
    group.add_argument("--soak-seed", type=int, help="seed for the churn (default: random)")
    args = parser.parse_args(argv)
    # The servers inherit this: ngIRCd takes no more clients than its soft
    # limit on open files allows (1,024 by default), then lets connects time out.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runs = 1 if args.smoke or set(args.scenarios) <= ON_REQUEST else args.runs
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}{'-smoke' if args.smoke else ''}.jsonl"
    rows: list[dict[str, Any]] = []
    failures = 0
    with out.open("w") as f:
        f.write(json.dumps({"machine": platform.platform(), "cores": os.cpu_count(),
                            "python": sys.version.split()[0], "runs": runs}) + "\n")
        for run in range(runs):
            for scenario in args.scenarios:
                if scenario in ON_REQUEST and run > 0:
                    continue  # one long run: its checks pass or fail, there is no median
                function, sizes = scenario_for(scenario, args)
                for n in sizes:
                    if args.sizes and n not in args.sizes:
                        continue
                    for name, factory in servers_for(scenario, args.smoke, args.servers):
                        if args.servers and name not in args.servers:
                            continue
                        row = {"scenario": scenario, "n": n, "server": name, "run": run}
                        try:
                            row.update(function(factory, n, args.smoke))
                        except Exception as e:  # one server failing must not lose the rest
                            row["error"] = repr(e)
                        bad = row.get("error") or row.get("lost") or row.get("reordered") \
                            or row.get("timed_out") or row.get("room_lost") \
                            or row.get("room_received") != row.get("room_expected")
                        failures += bool(bad)
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        print(_summary(row), flush=True)
    print(f"\nresults: {out}")
    if not args.smoke:
        print(table(rows))
    return 1 if failures else 0


def _summary(row: dict[str, Any]) -> str:
    keys = ("deliveries_per_s", "p50_ms", "p99_ms", "delivered", "lost", "reordered",
            "duplicates", "server_cpu_s", "peak_rss_kib", "kib_per_connection", "logins_per_s",
            "bcrypt_limit_per_s", "room_p99_ms", "reconnects", "threads_baseline", "threads_end",
            "fds_baseline", "fds_end", "rss_kib_warm", "rss_kib_end", "error")
    shown = " ".join(f"{k}={row[k]}" for k in keys if k in row)
    return f"{row['scenario']:<12} n={row['n']:<5} {row['server']:<13} run {row['run']}: {shown}"


def table(rows: list[dict[str, Any]]) -> str:
    """Medians per scenario, size and server, with ratios to the baselines."""
    groups: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["n"]), {}).setdefault(row["server"], []).append(row)
    metric = {"fanout": "deliveries_per_s", "latency": "p99_ms",
              "connections": "kib_per_connection", "logins": "logins_per_s",
              "soak": "delivered"}
    lines = []
    for (scenario, n), by_server in groups.items():
        key = metric[scenario]
        medians = {s: statistics.median(r[key] for r in rs if key in r)
                   for s, rs in by_server.items() if any(key in r for r in rs)}
        base = medians.get("authchat")
        lines.append(f"{scenario} n={n} ({key}, median of runs)")
        for server, value in medians.items():
            ratio = f"  authchat/{server} = {base / value:.2f}" if base and value and \
                server != "authchat" else ""
            lines.append(f"  {server:<13} {value:>12,.2f}{ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
