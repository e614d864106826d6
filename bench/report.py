"""Markdown tables from a results file: `python -m bench.report bench/results/FILE.jsonl`.

For every scenario and size: each server's median over the runs, and
authchat's figure divided by the server's, each run's ratio taken between
servers measured in that same run, then the median of those ratios.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

COLUMNS = {  # scenario: (the figure compared, the other figures shown)
    "fanout": ("deliveries_per_s", ["p50_ms", "p99_ms", "server_cpu_s", "generator_cpu_s",
                                    "peak_rss_kib"]),
    "latency": ("p99_ms", ["p50_ms", "max_ms", "deliveries_per_s", "server_cpu_s"]),
    "connections": ("kib_per_connection", ["held", "rss_kib_held", "room_received"]),
    "logins": ("logins_per_s", ["bcrypt_limit_per_s", "fraction_of_limit", "room_p50_ms",
                                "room_p99_ms", "server_cpu_s"]),
    "soak": ("delivered", ["messages_sent", "lost", "reordered", "duplicates", "reconnects",
                           "threads_baseline", "threads_end", "fds_baseline", "fds_end",
                           "rss_kib_warm", "rss_kib_end", "p99_ms"]),
}


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[0], lines[1:]


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return statistics.median(values) if values else None


def ratios(rows: list[dict[str, Any]], key: str, server: str) -> float | None:
    """Median over runs of authchat's figure / `server`'s, within each run."""
    by_run: dict[int, dict[str, float]] = {}
    for row in rows:
        if isinstance(row.get(key), (int, float)):
            by_run.setdefault(row["run"], {})[row["server"]] = row[key]
    values = [run["authchat"] / run[server] for run in by_run.values()
              if run.get("authchat") and run.get(server)]
    return statistics.median(values) if values else None


def markdown(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out = [f"Machine: {header['machine']}, {header['cores']} cores, Python {header['python']}; "
           f"{header['runs']} runs.", ""]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["n"]), []).append(row)
    for (scenario, n), group in groups.items():
        key, others = COLUMNS[scenario]
        servers = list(dict.fromkeys(row["server"] for row in group))
        out.append(f"### {scenario}, n = {n}")
        out.append("")
        out.append("| server | " + " | ".join([key, "authchat ÷ server", *others, "errors"]) + " |")
        out.append("|" + "---|" * (len(others) + 4))
        for server in servers:
            mine = [row for row in group if row["server"] == server]
            cells = [server, _fmt(median_of(mine, key)),
                     "" if server == "authchat" else _fmt(ratios(group, key, server), 2)]
            cells += [_fmt(median_of(mine, other)) for other in others]
            problems = sum(1 for row in mine if row.get("error") or row.get("lost")
                           or row.get("reordered") or row.get("timed_out"))
            cells.append(f"{problems} of {len(mine)}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _fmt(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "\N{EN DASH}"  # no figure: a dash, as tables print it
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def main() -> None:
    header, rows = load(Path(sys.argv[1]))
    print(markdown(header, rows))


if __name__ == "__main__":
    main()
