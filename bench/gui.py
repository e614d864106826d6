"""The desktop client under a flood: `python -m bench.gui [--runs N] [--messages N]`.

Does the window keep drawing and reading keys while messages pour in? A
heartbeat scheduled on the Tk thread every HEARTBEAT_MS records when it
really runs; a gap between two beats is time in which the window could not
redraw or take a key press. Each run:

1. `authchat serve` (TLS) as a process; the desktop client in this process,
   logged in through its own form, on an X display of its own (Xvfb);
2. IDLE_S seconds of quiet: the longest gap then is the baseline;
3. a second client sends `--messages` messages (1,000 and 10,000) in one
   write, and the clock runs until the window shows the last one.

Each run does this with the batch the client ships with (`WORK_PER_TICK`
events per turn of the event loop) and with no bound (everything queued
handled in one turn), one after the other, so the difference is measured on
the same machine at the same time. Results go to bench/results/<time>-gui.jsonl
and a table of medians to standard output.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import select
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
import tkinter as tk
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authchat.client import ClientOptions
from authchat.client.gui import App
from authchat.client.gui.threads import WORK_PER_TICK
from authchat.tls import CERT_FILENAME, fingerprint

from .drivers import account
from .servers import BENCH_PASSWORD, Authchat

RESULTS = Path(__file__).resolve().parent / "results"
HEARTBEAT_MS = 5
IDLE_S = 2.0
DEADLINE_S = 60.0
XVFB_START_S = 15.0
UNBOUNDED = 10**9


class NoScreen(RuntimeError):
    """Neither Xvfb nor a display to draw on."""


@contextmanager
def x_display(width: int = 1280, height: int = 800) -> Iterator[str]:
    """An X display of our own (Xvfb, stopped afterwards), else $DISPLAY.

    Raises:
        NoScreen: there is neither.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if not os.environ.get("DISPLAY"):
            raise NoScreen("no X display and no Xvfb")
        yield os.environ["DISPLAY"]
        return
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24",
         "-nolisten", "tcp"], pass_fds=[write_end], stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        yield f":{_read_display_number(read_end)}"
    finally:
        os.close(read_end)
        server.terminate()
        server.wait(10)


def _read_display_number(pipe: int) -> str:
    number = b""
    while not number.endswith(b"\n"):
        ready, _, _ = select.select([pipe], [], [], XVFB_START_S)
        chunk = os.read(pipe, 16) if ready else b""
        if not chunk:
            raise NoScreen("Xvfb did not start")
        number += chunk
    return number.decode().strip()


def flood(port: int, messages: int, marks: dict[str, float]) -> threading.Thread:
    """A second client that logs in, says `messages` lines in one write (marking
    the moment as "flood"), then reads them back. All on its own thread."""

    def run() -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback, our own server: speed, not trust
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30)) \
                as sock, sock.makefile("rb") as reader:
            login = {"type": "login", "username": account(1), "password": BENCH_PASSWORD}
            sock.sendall(json.dumps(login).encode() + b"\n")
            while json.loads(reader.readline()).get("type") != "welcome":
                pass
            lines = b"".join(b'{"type":"say","text":"flood %d"}\n' % n for n in range(messages))
            last = b"flood %d" % (messages - 1)
            marks["flood"] = time.monotonic()
            sock.sendall(lines)
            while (line := reader.readline()) and last not in line:
                pass  # read our echoes, or the server would evict us as a slow reader

    return threading.Thread(target=run, name="flooder", daemon=True)


def one_run(display: str, server: Authchat, messages: int, per_tick: int,
            workdir: Path) -> dict[str, Any]:
    try:
        beats, marks, flooder = _watch_a_flood(display, server, messages, per_tick, workdir)
    finally:
        # The window's objects, which became garbage as the watch returned, are
        # collected here on the Tk thread (see authchat.client.gui.collected_here).
        gc.collect()
        gc.enable()
    if "shown" not in marks:
        raise RuntimeError(f"the window did not show {messages} messages in {DEADLINE_S} s")
    if flooder is not None:
        flooder.join(DEADLINE_S)
    return _figures(beats, marks, messages, per_tick)


def _watch_a_flood(display: str, server: Authchat, messages: int, per_tick: int,
                   workdir: Path) -> tuple[list[float], dict[str, float], threading.Thread | None]:
    """Log in, beat, flood; the heartbeats, the moments marked, and the flooder."""
    root = tk.Tk(screenName=display, className="authchat")
    cert = ssl.PEM_cert_to_DER_cert((server.dir / CERT_FILENAME).read_text())
    options = ClientOptions(port=server.port, fingerprint=fingerprint(cert),
                            known_servers=workdir / "known_servers")
    app = App(root, options, account(0), reconnect=False, work_per_tick=per_tick)
    assert app.form is not None
    app.form.entries["Password"].insert(0, BENCH_PASSWORD)
    app.form.submit()
    beats: list[float] = []
    marks: dict[str, float] = {}
    state: dict[str, Any] = {}

    def beat() -> None:
        beats.append(time.monotonic())
        root.after(HEARTBEAT_MS, beat)

    def last_lines() -> str:  # the flooder's leave may follow its last message
        assert app.view is not None
        return str(app.view.conversations[""].text.get("end-1c-3l linestart", "end-1c"))

    def start_flood() -> None:
        state["flooder"] = flood(server.port, messages, marks)
        state["flooder"].start()
        root.after(10, check)

    def check() -> None:
        if f"<{account(1)}> flood {messages - 1}\n" in last_lines():
            marks["shown"] = time.monotonic()
            root.quit()
        else:
            root.after(10, check)

    def logged_in() -> None:
        if app.view is None:
            root.after(10, logged_in)
            return
        marks["idle"] = time.monotonic()
        root.after(HEARTBEAT_MS, beat)
        root.after(int(IDLE_S * 1000), start_flood)

    root.after(10, logged_in)
    root.after(int(DEADLINE_S * 1000), root.quit)  # bounded, whatever happens
    root.mainloop()
    app.quit()
    app.wait_closed()
    gc.disable()  # not during the watch, which should see collections as they come
    return beats, marks, state.get("flooder")


def _figures(beats: list[float], marks: dict[str, float], messages: int,
             per_tick: int) -> dict[str, Any]:
    gaps = [(b - a, b) for a, b in itertools.pairwise(beats)]
    idle = [gap for gap, at in gaps if at <= marks["flood"]]
    busy = [gap for gap, at in gaps if marks["flood"] < at <= marks["shown"]]
    busy_sorted = sorted(busy) or [0.0]
    return {
        "per_tick": "unbounded" if per_tick >= UNBOUNDED else per_tick,
        "messages": messages,
        "idle_max_gap_ms": round(max(idle) * 1000, 1),
        "flood_max_gap_ms": round(max(busy_sorted) * 1000, 1),
        "flood_p99_gap_ms": round(busy_sorted[int(0.99 * (len(busy_sorted) - 1))] * 1000, 1),
        "beats_during_flood": len(busy),
        "show_all_s": round(marks["shown"] - marks["flood"], 3),
    }


def table(rows: list[dict[str, Any]]) -> str:
    keys = ["idle_max_gap_ms", "flood_max_gap_ms", "flood_p99_gap_ms", "beats_during_flood",
            "show_all_s"]
    out = ["| messages | batch per tick | " + " | ".join(keys) + " |",
           "|---" * (len(keys) + 2) + "|"]
    for setting in dict.fromkeys((row["messages"], str(row["per_tick"])) for row in rows):
        mine = [row for row in rows if (row["messages"], str(row["per_tick"])) == setting]
        medians = [statistics.median(row[key] for row in mine) for key in keys]
        out.append(f"| {setting[0]:,} | {setting[1]} | "
                   + " | ".join(f"{m:g}" for m in medians) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each setting (default 5)")
    parser.add_argument("--messages", type=int, nargs="*", default=[1000, 10_000],
                        help="flood sizes (default 1000 10000)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-gui.jsonl"
    server = Authchat(tls=True)
    rows = []
    try:
        server.start(users=2)
        with x_display() as display:
            for run, messages, per_tick in itertools.product(
                    range(args.runs), args.messages, (WORK_PER_TICK, UNBOUNDED)):
                row = {"run": run, **one_run(display, server, messages, per_tick, server.dir)}
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    finally:
        server.stop()
    print(f"\n{args.runs} runs, medians ({out}):\n\n{table(rows)}")


if __name__ == "__main__":
    main()
