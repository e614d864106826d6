"""Several admin processes writing the same database at once."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from conftest import GOOD_PASSWORD, Runner

PROCESSES = 4
ADDS_EACH = 50


@pytest.mark.slow
def test_concurrent_users_add_processes(run_cli: Runner) -> None:
    run_cli("db", "migrate", check=True)
    failures: list[subprocess.CompletedProcess[str]] = []
    start = threading.Barrier(PROCESSES)

    def worker(w: int) -> None:
        start.wait()
        for n in range(ADDS_EACH):
            result = run_cli("users", "add", f"p{w}u{n}", "--password-stdin",
                             input=GOOD_PASSWORD + "\n")
            if result.returncode != 0 or result.stderr:
                failures.append(result)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(PROCESSES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    names = [u["username"] for u in json.loads(run_cli("users", "list", "--json").stdout)]
    expected = {f"p{w}u{n}" for w in range(PROCESSES) for n in range(ADDS_EACH)}
    assert len(names) == len(expected) and set(names) == expected  # none lost, none twice
    audit = json.loads(run_cli("users", "audit", "--limit", "1000", "--json").stdout)
    assert sorted(e["target"] for e in audit if e["action"] == "user.create") == sorted(expected)
