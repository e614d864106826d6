"""The benchmark suite's smoke run: every scenario, every installed server, briefly.

Correctness only: each run must deliver every message, in order, to every
client. The timings it prints are not checked here; they belong in
docs/benchmarks.md, measured by a full run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_S = 600


def test_benchmark_smoke_loses_and_reorders_nothing(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--results", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    files = list(tmp_path.glob("*-smoke.jsonl"))
    assert len(files) == 1, result.stdout + result.stderr
    rows = [json.loads(line) for line in files[0].read_text().splitlines()[1:]]
    scenarios = {row["scenario"] for row in rows}
    assert scenarios == {"fanout", "latency", "connections", "logins"}
    assert {"authchat", "authchat-tls", "toy"} <= {row["server"] for row in rows}
    for row in rows:
        assert "error" not in row, row
        if row["scenario"] in ("fanout", "latency"):
            assert row["received"] == row["expected"] > 0, row
            assert row["lost"] == 0 and row["reordered"] == 0 and not row["timed_out"], row
        elif row["scenario"] == "connections":
            assert row["held"] > 0 and row["room_lost"] == 0, row
            assert row["room_received"] == row["room_expected"] > 0, row
        else:
            assert row["logins_per_s"] > 0 and row["room_p99_ms"] > 0, row
    assert result.returncode == 0, result.stdout + result.stderr
