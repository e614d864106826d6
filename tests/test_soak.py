"""The soak: its checker on made-up sequences, and its 30-second CI version.

The 10-minute run with 500 clients lives in the benchmark suite
(docs/benchmarks.md, Soak); CI runs the same scenario for 30 seconds with
100 clients, as a real process, the way it runs the benchmark smoke. The
server is `authchat serve` at bcrypt cost 4: bench/servers.py sets it
through AUTHCHAT_AUTH_BCRYPT_COST, and the result records it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.soakload import RoomView

ROOT = Path(__file__).resolve().parent.parent
CI_SECONDS = 30
CI_CLIENTS = 100  # 80 stayers and 20 churners: fits a 2-core box with the server
RUN_TIMEOUT_S = 300  # about 40 s when all is well; a hang fails here instead of in CI's limit


def view_of(*messages: tuple[int, int, int], joined_late: bool = False) -> RoomView:
    """A RoomView fed (id, sender, seq) messages in the order given."""
    view = RoomView(joined_late)
    for msg_id, sender, seq in messages:
        view.add(msg_id, False, sender, seq)
    return view


def test_room_view_accepts_every_message_in_order() -> None:
    view = view_of((1, 0, 0), (2, 1, 0), (3, 0, 1))
    view.add(4, True, 0, 2)  # sender 0's end marker: it sent 2
    assert view.errors == 0 and view.delivered == 4 and view.ends == {0: 2}


def test_room_view_counts_a_gap_as_missing() -> None:
    view = view_of((1, 0, 0), (3, 0, 2))
    assert len(view.missing) == 1 and view.sender_errors == 1 and view.delivered == 2


def test_room_view_tells_a_late_message_from_a_duplicate() -> None:
    view = view_of((1, 0, 0), (3, 0, 2), (2, 0, 1), (2, 0, 1))
    assert view.reordered == 1 and view.duplicates == 1 and not view.missing


def test_room_view_checks_each_senders_order() -> None:
    view = view_of((1, 0, 1), (2, 0, 0))  # ids in order, the sender's numbers not
    assert view.sender_errors == 2 and not view.missing


def test_room_view_of_a_late_joiner_starts_each_sender_anywhere() -> None:
    assert view_of((40, 0, 17), (41, 1, 5), (42, 0, 18), joined_late=True).errors == 0
    assert view_of((40, 0, 17), (41, 0, 19), joined_late=True).sender_errors == 1


def test_room_views_of_the_same_sequence_have_the_same_digest() -> None:
    same = [view_of((1, 0, 0), (2, 1, 0)).summary()["digest"] for _ in range(2)]
    other = view_of((1, 1, 0), (2, 0, 0)).summary()["digest"]
    assert same[0] == same[1] != other


def run_soak(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--scenarios", "soak",
         "--soak-seconds", str(CI_SECONDS), "--soak-clients", str(CI_CLIENTS),
         "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1, result.stdout + result.stderr
    rows = [json.loads(line) for line in files[0].read_text().splitlines()[1:]]
    assert len(rows) == 1, rows
    return result, rows[0]


@pytest.mark.slow
def test_soak_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    result, row = run_soak(tmp_path)
    assert (row["scenario"], row["server"], row["bcrypt_cost"]) == ("soak", "authchat-tls", 4)
    assert "error" not in row, row["error"]
    assert row["stayers"] + row["churners"] == CI_CLIENTS and row["reconnects"] > 0, row
    assert row["delivered"] == row["expected"] > 0, row
    assert row["lost"] == row["duplicates"] == row["reordered"] == 0, row
    assert row["sender_order_errors"] == row["churn_session_errors"] == 0, row
    assert row["stayers_dropped"] == row["churn_login_failures"] == 0, row
    assert row["sequences_identical"] and not row["timed_out"], row
    assert row["threads_end"] <= row["threads_baseline"] + row["threads_tolerance"], row
    assert row["fds_end"] <= row["fds_baseline"] + row["fds_tolerance"], row
    assert result.returncode == 0, result.stdout + result.stderr
