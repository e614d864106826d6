"""The desktop client, driven like a person would, in a real window on a real X
display (Xvfb), against a real server, with scripted clients on the other side.

Most tests run the window in this process, so they can read what it shows;
the last one runs `authchat gui` as a process and types into it with xdotool.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from authchat.client import ClientOptions
from authchat.tls import CERT_FILENAME, KnownServers, fingerprint

from conftest import GOOD_PASSWORD, assert_one_line_error, cli_env
from helpers import Client, add_user, start_server

tk = pytest.importorskip("tkinter", reason="this Python has no tkinter: no desktop client")

from authchat.client.gui import App, collected_here  # noqa: E402  (needs tkinter)
from authchat.client.gui.chat_window import ChatView  # noqa: E402
from authchat.client.gui.widgets import Dialog  # noqa: E402
from bench.gui import NoScreen, x_display  # noqa: E402  (the benchmark's display, shared)

T = TypeVar("T")
WAIT_S = 15.0
# Every root window made here, kept to the end of the run: a failing test's
# traceback keeps its window alive, and when that finally let go on some
# other thread, Tcl would abort the whole run (see authchat.client.gui.collected_here).
KEPT_UNTIL_EXIT: list[tk.Tk] = []
SCREEN = (1280, 800)


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """An X display of our own (Xvfb), or the one we are on; skip if neither."""
    try:
        with x_display(*SCREEN) as name:
            yield name
    except NoScreen as e:
        pytest.skip(f"{e}: the desktop client needs a screen to be tested on "
                    "(.ci/run installs Xvfb)")


class Gui:
    """The desktop client in this process, on `display`, and ways to work it."""

    def __init__(self, display: str, options: ClientOptions, username: str = "") -> None:
        self.root = tk.Tk(screenName=display, className="authchat")
        KEPT_UNTIL_EXIT.append(self.root)
        self.app = App(self.root, options, username)

    def wait_for(self, condition: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
        """Run the window until `condition()` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            self.root.update()
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: never happened")
            time.sleep(0.01)

    def press(self, widget: tk.Misc, key: str, times: int = 1) -> None:
        """Press `key` in `widget`; several times before anything else is handled,
        as fast fingers do, if `times` says so."""
        widget.focus_force()
        self.root.update()
        for _ in range(times):
            widget.event_generate(key)
        self.root.update()

    def type_into(self, widget: tk.Misc, text: str) -> None:
        widget.focus_force()
        widget.insert("end", text)  # type: ignore[attr-defined]

    def log_in(self, password: str = GOOD_PASSWORD, *, create: bool = False,
               presses: int = 1) -> None:
        form = self.app.form
        assert form is not None
        form.forget_password()
        form.entries["Password"].insert(0, password)
        if form.ticked(form.create) != create:
            form.create.invoke()  # as a click does
        self.press(form.entries["Password"], "<Return>", presses)

    def dialog(self, title: str) -> Dialog:
        return self.wait_for(lambda: next((d for d in dialogs(self.root) if d.title() == title),
                                          None), f"a dialog titled {title!r}")

    @property
    def view(self) -> ChatView:
        return self.wait_for(lambda: self.app.view, "the chat window")

    def room(self) -> str:
        return self.view.conversations[""].contents()

    def say(self, text: str) -> None:
        self.type_into(self.view.entry, text)
        self.press(self.view.entry, "<Return>")

    def click(self, widget: tk.Misc) -> None:
        """Click the middle of `widget` with the first button, as the mouse would."""
        where = {"x": widget.winfo_width() // 2, "y": widget.winfo_height() // 2}
        for event in ("<Enter>", "<ButtonPress-1>", "<ButtonRelease-1>"):
            widget.event_generate(event, **where)
        self.root.update()

    def click_user(self, name: str, button: int = 1, clicks: int = 1) -> None:
        """Click on `name` in the user list, as the mouse would."""
        users = self.view.users
        x, y, _, height = users.bbox(self.view.listed.index(name))
        where = {"x": x + 5, "y": y + height // 2, "rootx": users.winfo_rootx() + x + 5,
                 "rooty": users.winfo_rooty() + y + height // 2}
        for _ in range(clicks):
            users.event_generate(f"<ButtonPress-{button}>", **where)
            users.event_generate(f"<ButtonRelease-{button}>", **where)
        self.root.update()

    def from_chat_menu(self, label: str) -> None:
        """Pick an entry of the menu bar's Chat menu."""
        bar = self.root.nametowidget(self.root.cget("menu"))
        self.root.nametowidget(bar.entrycget("Chat", "menu")).invoke(label)

    def choose(self, menu: tk.Menu, label: str) -> None:
        """Click an entry of a posted menu, as the mouse would (which also unposts it)."""
        y = menu.yposition(menu.index(label)) + 5
        for event in ("<Enter>", "<Motion>", "<ButtonRelease-1>"):
            menu.event_generate(event, x=10, y=y)
        self.root.update()

    def close(self) -> None:
        if not self.app.closed.is_set():
            self.app.quit()
        self.app.wait_closed()


def dialogs(widget: tk.Misc) -> list[Dialog]:
    found = [widget] if isinstance(widget, Dialog) else []
    for child in widget.winfo_children():
        found += dialogs(child)
    return found


@pytest.fixture
def gui(display: str, tmp_path: Path) -> Iterator[Callable[..., Gui]]:
    opened: list[Gui] = []

    def open_gui(port: int, username: str = "alice", tls: bool = False) -> Gui:
        options = ClientOptions(host="127.0.0.1", port=port, tls=tls,
                                known_servers=tmp_path / "known_servers")
        window = Gui(display, options, username)
        opened.append(window)
        return window

    yield open_gui
    with collected_here():  # the windows' objects die on this thread, the Tk one
        while opened:  # no loop variable left holding the last one past the collection
            opened.pop().close()


def menu_labels(menu: tk.Menu) -> list[str]:
    last = menu.index("end")
    return [] if last is None else [menu.entrycget(i, "label") for i in range(last + 1)
                                    if menu.type(i) == "command"]


def screenshot(window: tk.Misc, display: str, path: Path) -> None:
    from PIL import ImageGrab

    window.update()
    menubar = window.nametowidget(window.cget("menu"))  # drawn just above the window
    x, y = window.winfo_rootx(), window.winfo_rooty() - menubar.winfo_reqheight()
    box = (x, y, x + window.winfo_width(), window.winfo_rooty() + window.winfo_height())
    ImageGrab.grab(bbox=box, xdisplay=display).save(path)


@pytest.mark.slow
def test_log_in_chat_dm_presence_and_screenshot(gui: Callable[..., Gui], display: str,
                                                tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home, tls__enabled=True)
    for name in ("alice", "bob", "carol"):
        add_user(server, name)
    bob = carol = None
    try:
        window = gui(server.address[1], tls=True)
        assert window.app.form is not None
        window.log_in()

        # A self-signed server: the fingerprint is shown, and trusted only when asked.
        trust = window.dialog("Trust this server?")
        assert server.fingerprint in [e.get() for e in entries_of(trust)]
        trust.buttons["Trust"].invoke()
        view = window.view
        assert f"TLS, SHA-256 {server.fingerprint[:23]}…" in view.security.cget("text")
        view.security.event_generate("<Button-1>")
        security = window.dialog("Connection security")
        assert [e.get() for e in entries_of(security)] == [server.fingerprint]
        security.buttons["OK"].invoke()
        assert KnownServers(tmp_path / "known_servers").get("127.0.0.1", server.address[1])
        window.wait_for(lambda: "logged in as alice" in window.room(), "the welcome")
        assert view.listed == ["alice"]

        bob = Client(server.address, cafile=home / CERT_FILENAME)
        bob.login("bob")
        window.wait_for(lambda: "--> bob joined" in window.room(), "bob's join")
        window.wait_for(lambda: view.listed == ["alice", "bob"], "bob in the user list")

        window.say("hello bob")
        bob.expect("message", text="hello bob", **{"from": "alice"})
        window.wait_for(lambda: "<alice> hello bob" in window.room(), "alice's own echo")
        assert view.entry.get("1.0", "end-1c") == ""

        # Shift-Enter is a new line in the message; Enter sends it.
        window.type_into(view.entry, "first line")
        window.press(view.entry, "<Shift-Return>")
        window.type_into(view.entry, "second line")
        window.press(view.entry, "<Return>")
        bob.expect("message", text="first line\nsecond line")

        bob.send({"type": "say", "text": "hi alice, how are you?"})
        bob.expect("message", text="hi alice, how are you?")  # his own echo
        window.wait_for(lambda: "<bob> hi alice, how are you?" in window.room(), "bob's message")

        # Not an admin: the user list's menu offers only a private message.
        window.click_user("bob", button=3)
        assert menu_labels(view.user_menu) == ["Message privately"]
        window.choose(view.user_menu, "Message privately")
        assert view.current().peer == "bob"
        view.tabs.select(view.conversations[""])
        window.root.update()
        assert view.current().peer is None

        # Double-click bob: his conversation comes to the front; typed there is a DM.
        window.click_user("bob", clicks=2)
        assert view.current().peer == "bob"
        window.say("psst, lunch?")
        bob.expect("dm", text="psst, lunch?", to="bob", **{"from": "alice"})
        bob.send({"type": "dm", "to": "alice", "text": "yes, noon"})
        dm = view.conversations["bob"]
        window.wait_for(lambda: "[bob -> alice] yes, noon" in dm.contents(), "bob's DM")
        assert "yes, noon" not in window.room()

        # While the DM is in front, the room's tab counts what arrives there...
        carol = Client(server.address, cafile=home / CERT_FILENAME)
        carol.login("carol")
        carol.send({"type": "say", "text": "the deploy went out at 10:40, all green"})
        window.wait_for(lambda: "deploy went out" in window.room(), "carol's message")
        assert tab_title(view, "") == "# room (1)"
        view.tabs.select(view.conversations[""])
        window.wait_for(lambda: tab_title(view, "") == "# room", "the count cleared")
        # ...and the other way round.
        bob.send({"type": "dm", "to": "alice", "text": "bring the slides"})
        window.wait_for(lambda: tab_title(view, "bob") == "@bob (1)", "the DM tab's count")

        window.type_into(view.entry, "great, thanks carol!")
        picture = tmp_path / "gui.png"
        screenshot(window.root, display, picture)
        if os.environ.get("AUTHCHAT_SCREENSHOT"):  # how docs/gui.png is made
            shutil.copy(picture, os.environ["AUTHCHAT_SCREENSHOT"])
        assert_is_a_picture_of(window.root, picture)

        bob.send({"type": "quit"})
        window.wait_for(lambda: "<-- bob left (quit)" in window.room(), "bob's leave")
        assert "bob left" in dm.contents()  # said in his conversation too
        window.wait_for(lambda: view.listed == ["alice", "carol"], "bob off the list")
    finally:
        for client in (bob, carol):
            if client is not None:
                client.close()
        server.shutdown()


def test_the_status_bar_fits_the_smallest_window(gui: Callable[..., Gui],
                                                 servers: Callable[..., object]) -> None:
    server = servers(tls__enabled=True)
    name = "alexandra.konstantinopoulou_2024"  # as long as a name can be
    add_user(server, name)
    window = gui(server.address[1], username=name, tls=True)
    window.log_in()
    window.dialog("Trust this server?").buttons["Trust"].invoke()
    view = window.view
    where = f"{name} @ 127.0.0.1:{server.address[1]}"
    short = f"TLS, SHA-256 {server.fingerprint[:23]}…"
    assert re.fullmatch(r"TLS, SHA-256 ([0-9A-F]{2}:){7}[0-9A-F]{2}…", short)

    window.root.geometry("640x420")  # the smallest it can be made
    window.wait_for(lambda: view.winfo_width() == 640, "the window made small")
    assert_whole_and_in_view(view)
    assert view.security.cget("text") == short
    assert view.status.cget("text") == "connected"
    cut = view.where.cget("text")  # the least needed: the title says it too
    assert cut.endswith("…") and where.startswith(cut[:-1]) and len(cut) > 10
    # A long state, such as a reason for ending, gives way too, after a whole
    # character, but the security part does not.
    long_state = f"disconnected: {'a long reason ' * 20}"
    view.show_status(long_state, "error")
    window.root.update()
    assert_whole_and_in_view(view)
    assert view.security.cget("text") == short and view.where.cget("text") == ""
    cut = view.status.cget("text")
    assert cut.endswith("…") and long_state.startswith(cut[:-1]) and len(cut) > 20
    view.show_status("connected", "info")

    window.root.geometry("960x620")
    window.wait_for(lambda: view.winfo_width() == 960, "the window made large again")
    assert view.where.cget("text") == where  # room for all of it again
    assert_whole_and_in_view(view)
    view.where.event_generate("<Button-1>")  # the whole fingerprint is a click away
    security = window.dialog("Connection security")
    assert [e.get() for e in entries_of(security)] == [server.fingerprint]


def assert_whole_and_in_view(view: ChatView) -> None:
    """The status bar's labels, the input box and Send are all in the window, and
    each label has the room its text needs (none is cut off by an edge)."""
    right, bottom = view.winfo_rootx() + view.winfo_width(), \
        view.winfo_rooty() + view.winfo_height()
    for widget in (view.entry, view.send_button, view.bar):
        assert widget.winfo_ismapped(), f"{widget} is not shown"
        assert widget.winfo_rootx() + widget.winfo_width() <= right
        assert widget.winfo_rooty() + widget.winfo_height() <= bottom
    shown = sorted((label for label in (view.status, view.where, view.security)
                    if label.cget("text")), key=lambda label: label.winfo_x())
    for label in shown:
        assert label.winfo_ismapped() and label.winfo_width() >= label.winfo_reqwidth(), \
            f"{label.cget('text')!r} is clipped"
    for left, following in zip(shown, shown[1:]):
        assert left.winfo_x() + left.winfo_width() <= following.winfo_x()
    assert shown[-1].winfo_x() + shown[-1].winfo_width() <= view.bar.winfo_width()


def tab_title(view: ChatView, key: str) -> str:
    return str(view.tabs.tab(view.conversations[key], "text"))


def entries_of(dialog: Dialog) -> list[tk.Entry]:
    found = []
    stack: list[tk.Misc] = [dialog]
    while stack:
        widget = stack.pop()
        if widget.winfo_class() == "TEntry":
            found.append(widget)
        stack += widget.winfo_children()
    return found


def assert_is_a_picture_of(window: tk.Misc, path: Path) -> None:
    from PIL import Image

    with Image.open(path) as picture:
        width, height = picture.size
        assert width == window.winfo_width() and height >= window.winfo_height()
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, "the screenshot is blank"


def test_the_connect_form_s_boxes_show_their_real_state(gui: Callable[..., Gui],
                                                        servers: Callable[..., object]) -> None:
    server = servers()
    add_user(server, "alice")
    window = gui(server.address[1], tls=True)
    form = window.app.form
    assert form is not None
    window.wait_for(lambda: form.create.winfo_ismapped() and form.tls.winfo_ismapped(),
                    "the form drawn")
    window.root.update()

    def looks(box: Any) -> str:  # as the theme draws it
        return "half-ticked" if box.instate(["alternate"]) else \
            "ticked" if box.instate(["selected"]) else "empty"

    assert (looks(form.create), looks(form.tls)) == ("empty", "ticked")
    window.click(form.create)
    assert (looks(form.create), looks(form.tls)) == ("ticked", "ticked")
    assert form.button.cget("text") == "Create account"
    window.click(form.create)
    window.click(form.tls)
    assert (looks(form.create), looks(form.tls)) == ("empty", "empty")
    assert form.button.cget("text") == "Log in"
    window.click(form.tls)
    assert (looks(form.create), looks(form.tls)) == ("empty", "ticked")
    # What the boxes show is what the form does: log in (not create), over TLS.
    window.log_in()
    window.dialog("Could not connect").buttons["OK"].invoke()  # this server is plaintext
    window.click(form.tls)
    window.log_in()
    window.wait_for(lambda: window.app.view is not None and "logged in as alice"
                    in window.room(), "logged in")


def test_wrong_password_and_taken_name_are_said_plainly(gui: Callable[..., Gui],
                                                        servers: Callable[..., object]) -> None:
    server = servers()
    add_user(server, "alice")
    window = gui(server.address[1])
    window.log_in("not the password at all")
    refused = window.dialog("Could not log in")
    assert refused.message.cget("text") == "wrong username or password"
    refused.buttons["OK"].invoke()
    form = window.app.form
    assert form is not None and "disabled" not in form.button.state()

    window.log_in("a brand new long password", create=True)
    taken = window.dialog("Could not log in")
    assert taken.message.cget("text").startswith("that username is taken")
    taken.buttons["OK"].invoke()
    assert window.app.view is None

    window.log_in()
    window.wait_for(lambda: "logged in as alice" in window.room(), "the right password works")


def test_a_server_name_that_cannot_be_is_said_plainly(gui: Callable[..., Gui],
                                                     servers: Callable[..., object]) -> None:
    server = servers()
    add_user(server, "alice")
    window = gui(server.address[1], tls=True)
    form = window.app.form
    assert form is not None
    form.entries["Server"].delete(0, "end")
    form.entries["Server"].insert(0, "chat..example.org")
    window.log_in()
    refused = window.dialog("Could not connect")
    assert "'chat..example.org' is not a host name or address" in refused.message.cget("text")
    refused.buttons["OK"].invoke()
    form.entries["Server"].delete(0, "end")
    form.entries["Server"].insert(0, "127.0.0.1")
    form.tls.invoke()  # this test server speaks plaintext
    window.log_in()  # the worker lived through it
    window.wait_for(lambda: window.app.view is not None and "logged in as alice"
                    in window.room(), "logged in")


def test_enter_twice_creates_the_account_once(gui: Callable[..., Gui],
                                              servers: Callable[..., object]) -> None:
    server = servers()
    window = gui(server.address[1], username="newcomer")
    # Impatient: Enter twice, the second before the first is answered (pressed
    # one at a time, a fast server could answer in between and take the form away).
    window.log_in("a brand new long password", create=True, presses=2)
    window.wait_for(lambda: window.app.view is not None and "logged in as newcomer"
                    in window.room(), "logged in")
    assert not dialogs(window.root)  # no "that username is taken"


def test_quitting_while_asked_to_trust_leaves_nothing_behind(gui: Callable[..., Gui],
                                                             servers: Callable[..., object],
                                                             tmp_path: Path) -> None:
    server = servers(tls__enabled=True)
    add_user(server, "alice")
    add_user(server, "bob")
    window = gui(server.address[1], tls=True)
    window.log_in()
    window.dialog("Trust this server?")
    app = window.app
    app.quit()
    app.wait_closed()
    assert not app.worker.thread.is_alive()
    assert not KnownServers(tmp_path / "known_servers").get("127.0.0.1", server.address[1])
    bob = Client(server.address, cafile=tmp_path / "home" / CERT_FILENAME)
    try:
        assert bob.login("bob")["users"] == ["bob"]  # no alice, half logged in
    finally:
        bob.close()


def test_hostile_text_is_shown_defused(gui: Callable[..., Gui],
                                       servers: Callable[..., object]) -> None:
    server = servers()
    for name in ("alice", "bob"):
        add_user(server, name)
    add_user(server, "boss", role="admin")
    window = gui(server.address[1])
    window.log_in()
    view = window.view
    bob, boss = Client(server.address), Client(server.address)
    # What the server lets through (it refuses C0 and C1 controls, which
    # display's tests cover): reordering marks, a line separator, and
    # invisible characters.
    hostile = "\u202eevil\u202c \u2028next \u200fmark pay\u200bpal\u2060\ufeff\u00ad"
    raw = ("\u202e", "\u202c", "\u2028", "\u200f", "\u200b", "\u2060", "\ufeff", "\u00ad")
    try:
        bob.login("bob")
        boss.login("boss")
        bob.send({"type": "say", "text": hostile})
        bob.send({"type": "dm", "to": "alice", "text": hostile})
        window.wait_for(lambda: "bob" in view.conversations and "evil" in
                        view.conversations["bob"].contents(), "the DM")
        window.wait_for(lambda: "evil" in window.room(), "the message")
        shown = window.room() + view.conversations["bob"].contents()
        assert not any(ch in shown for ch in raw) and "\\u202eevil" in shown
        assert "pay\\u200bpal\\u2060\\ufeff\\xad" in shown
        boss.send({"type": "kick", "username": "alice", "reason": hostile})
        ended = window.dialog("Disconnected")
        text = ended.message.cget("text")
        assert "removed from the server" in text and not any(ch in text for ch in raw)
    finally:
        bob.close()
        boss.close()


@pytest.mark.parametrize("remembered", ["pinned", "vouched for by an authority"])
def test_a_changed_certificate_is_refused_with_the_reason(gui: Callable[..., Gui],
                                                          servers: Callable[..., object],
                                                          tmp_path: Path, remembered: str) -> None:
    server = servers(tls__enabled=True)  # with a self-signed certificate
    add_user(server, "alice")
    port = server.address[1]
    before = fingerprint(b"old")
    line = before if remembered == "pinned" else f"ca {before}"
    (tmp_path / "known_servers").write_text(f"127.0.0.1:{port} {line}\n")
    window = gui(port, tls=True)
    window.log_in()
    refused = window.dialog("Server not trusted")
    text = refused.message.cget("text")
    assert "HAS CHANGED" in text and server.fingerprint in text
    assert not [d for d in dialogs(window.root) if d.title() == "Trust this server?"]
    assert window.app.view is None


@pytest.mark.slow
def test_admins_kick_and_ban_from_the_user_list(gui: Callable[..., Gui],
                                                servers: Callable[..., object]) -> None:
    server = servers()
    add_user(server, "boss", role="admin")
    add_user(server, "bob")
    add_user(server, "carol")
    window = gui(server.address[1], username="boss")
    window.log_in()
    view = window.view
    bob, carol = Client(server.address), Client(server.address)
    try:
        bob.login("bob")
        carol.login("carol")
        window.wait_for(lambda: view.listed == ["bob", "boss", "carol"], "everyone listed")
        window.wait_for(lambda: "boss (admin, you)" in view.users.get(0, "end"),
                        "roles learnt from who")

        window.click_user("bob", button=3)
        assert menu_labels(view.user_menu) == ["Message privately", "Kick…", "Ban…"]
        window.choose(view.user_menu, "Kick…")
        kick = window.dialog("Kick bob")
        kick.entries[0].insert(0, "too loud")
        kick.buttons["Kick"].invoke()
        bob.expect_error("kicked")
        window.wait_for(lambda: "<-- bob left (kicked)" in window.room(), "bob kicked")

        window.click_user("carol", button=3)
        window.choose(view.user_menu, "Ban…")
        window.dialog("Ban carol").buttons["Ban"].invoke()
        carol.expect_error("kicked")
        window.wait_for(lambda: view.listed == ["boss"], "carol gone")
        again = Client(server.address)
        again.hello()
        again.send({"type": "login", "username": "carol", "password": GOOD_PASSWORD})
        again.expect_error("account_disabled")
        again.close()
    finally:
        bob.close()
        carol.close()


def test_being_kicked_is_explained_and_you_can_log_in_again(gui: Callable[..., Gui],
                                                            servers: Callable[..., object]
                                                            ) -> None:
    server = servers()
    add_user(server, "alice")
    add_user(server, "boss", role="admin")
    window = gui(server.address[1])
    window.log_in()
    view = window.view
    boss = Client(server.address)
    try:
        boss.login("boss")
        window.wait_for(lambda: "boss" in view.listed, "boss online")
        boss.send({"type": "kick", "username": "alice", "reason": "cool off"})
        ended = window.dialog("Disconnected")
        assert "you were removed from the server" in ended.message.cget("text")
        assert view.status.cget("text").startswith("disconnected: you were removed")
        assert str(view.entry.cget("state")) == "disabled"
        assert_lists_no_one(view)  # boss is still online, but we no longer hear of it
        ended.buttons["Log in again"].invoke()
        form = window.wait_for(lambda: window.app.form, "the connect form")
        assert form.value("Username") == "alice" and form.value("Password") == ""
        window.log_in()
        window.wait_for(lambda: window.app.view is not None and "logged in as alice"
                        in window.room(), "logged in again")
    finally:
        boss.close()


@pytest.mark.slow
def test_reconnects_with_backoff_after_the_server_restarts(gui: Callable[..., Gui],
                                                           tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home)
    add_user(server, "alice")
    add_user(server, "bob")
    port = server.address[1]
    window = gui(port)
    window.log_in()
    view = window.view
    bob = Client(server.address)
    try:
        bob.login("bob")
        window.wait_for(lambda: view.listed == ["alice", "bob"], "bob online")
        server.shutdown()
        window.wait_for(lambda: "the server is shutting down" in window.room(), "the reason")
        window.wait_for(lambda: view.status.cget("text").startswith("reconnecting in"),
                        "the status bar saying it reconnects")
        # Not connected, the window cannot know who is online: it lists no one.
        assert_lists_no_one(view)
        bob.close()
        server = start_server(home, server__port=port)
        window.wait_for(lambda: "reconnected" in window.room(), "back", timeout=30)
        window.wait_for(lambda: view.status.cget("text") == "connected", "status: connected")
        # The new session's welcome says who is online: alice, bob is not back.
        window.wait_for(lambda: view.listed == ["alice"], "the list refilled")
        assert view.online.cget("text") == "Online: 1"
        assert view.users.get(0, "end") == ("alice (you)",)
        bob = Client(server.address)
        bob.login("bob")
        window.wait_for(lambda: view.listed == ["alice", "bob"], "bob back on the list")
        window.say("still here")
        bob.expect("message", text="still here", **{"from": "alice"})
    finally:
        bob.close()
        server.shutdown()


def assert_lists_no_one(view: ChatView) -> None:
    assert view.listed == [] and view.users.get(0, "end") == ()
    assert view.online.cget("text") == "Online: — (not connected)"


@pytest.mark.slow
def alice_sees_bob(gui: Callable[..., Gui], server: Any) -> tuple[Gui, ChatView, Client]:
    """alice logged in in the window, bob as a scripted client, and alice seeing him."""
    add_user(server, "alice")
    add_user(server, "bob")
    window = gui(server.address[1])
    window.log_in()
    view = window.view
    bob = Client(server.address)
    bob.login("bob")
    window.wait_for(lambda: "bob" in view.listed, "bob online")
    return window, view, bob


def test_a_thousand_messages_arrive_whole_and_in_order(gui: Callable[..., Gui],
                                                       servers: Callable[..., object]) -> None:
    server = servers(limits__messages_per_second=10_000, limits__message_burst=10_000)
    window, view, bob = alice_sees_bob(gui, server)
    try:
        bob.send(b"".join(f'{{"type":"say","text":"flood {n:04d}"}}\n'.encode()
                          for n in range(1000)))
        text = view.conversations[""].text
        window.wait_for(lambda: "flood 0999" in window.room(), "the last of 1,000")
        received = [line.split("<bob> ")[1] for line in window.room().splitlines()
                    if "<bob> flood" in line]
        assert received == [f"flood {n:04d}" for n in range(1000)]
        assert text.yview()[1] == 1.0, "the list did not follow the newest message"
        # Scrolled up to read, the list stays put while more arrives.
        text.yview_moveto(0.0)
        window.root.update()
        bob.send({"type": "say", "text": "one more"})
        window.wait_for(lambda: "<bob> one more" in window.room(), "one more")
        assert text.yview()[0] == 0.0
        # (How long the window stands still in a flood is measured by bench/gui.py.)
    finally:
        bob.close()


THUMBS_UP, NEVER_ASSIGNED = "\U0001F44D", "\U0001FFFE"  # the second, a noncharacter


def emoji_fonts() -> str:
    """The fonts fontconfig has that draw U+1F44D, THUMBS UP SIGN; "" if none."""
    if shutil.which("fc-list") is None:
        return ""
    listed = subprocess.run(["fc-list", f":charset={ord(THUMBS_UP):x}", "family"],
                            capture_output=True, text=True, timeout=WAIT_S)
    return listed.stdout.strip()


@pytest.mark.skipif(not emoji_fonts(), reason="no font with emoji (Debian: "
                    "fonts-noto-color-emoji, which .ci/run installs)")
def test_an_emoji_is_drawn_as_a_glyph_not_a_box(gui: Callable[..., Gui], display: str,
                                                servers: Callable[..., object],
                                                tmp_path: Path) -> None:
    window, view, bob = alice_sees_bob(gui, servers())
    try:
        bob.send({"type": "say", "text": f"nice {THUMBS_UP} and {NEVER_ASSIGNED} box"})
        window.wait_for(lambda: "box" in window.room(), "the message")
    finally:
        bob.close()
    text = view.conversations[""].text
    text.see("end")
    # What a character no font has looks like (an empty box, "tofu"), drawn in
    # the same widget, line, font and colour, to compare the emoji with.
    emoji, tofu = (glyph(window, text, display, ch, tmp_path / f"{ord(ch):x}.png")
                   for ch in (THUMBS_UP, NEVER_ASSIGNED))
    assert len(tofu.getcolors()) > 1, "the empty box is not drawn: nothing to compare with"
    assert len(emoji.getcolors()) > 1, "nothing is drawn for the emoji"
    boxed = emoji.size == tofu.size and emoji.tobytes() == tofu.tobytes()
    assert not boxed, f"the emoji is drawn as the empty box of a missing character, though " \
        f"{emoji_fonts()!r} has it"


def glyph(window: Gui, text: tk.Text, display: str, character: str, path: Path) -> Any:
    """How `character`, shown in `text`, looks on the screen (RGB)."""
    from PIL import Image, ImageGrab

    window.root.update()
    where = text.search(character, "1.0")
    assert where, f"U+{ord(character):X} is not shown"
    x, y, width, height = text.bbox(where)
    left, top = text.winfo_rootx() + x, text.winfo_rooty() + y
    ImageGrab.grab(bbox=(left, top, left + width, top + height), xdisplay=display).save(path)
    with Image.open(path) as picture:
        return picture.convert("RGB")


def test_a_refused_line_goes_back_into_the_input_box(gui: Callable[..., Gui],
                                                     servers: Callable[..., object]) -> None:
    # Two requests in a burst: the window's own `who` at login, and the first line.
    server = servers(limits__messages_per_second=0.25, limits__message_burst=2)
    add_user(server, "alice")
    window = gui(server.address[1])
    window.log_in()
    view = window.view
    window.say("the first goes out")
    window.wait_for(lambda: "<alice> the first goes out" in window.room(), "the first")
    window.say("the second is one too many")
    window.wait_for(lambda: "!!! too many attempts" in window.room(), "the refusal")
    assert view.entry.get("1.0", "end-1c") == "the second is one too many"
    view.entry.delete("1.0", "end")
    window.say("/frobnicate")  # a mistake is shown and kept too, nothing is sent
    assert "unknown command /frobnicate" in window.room()
    assert view.entry.get("1.0", "end-1c") == "/frobnicate"


def test_changing_the_password_from_the_menu(gui: Callable[..., Gui],
                                             servers: Callable[..., object]) -> None:
    server = servers()
    add_user(server, "alice")
    window = gui(server.address[1])
    window.log_in()
    view = window.view
    elsewhere = Client(server.address)
    try:
        elsewhere.login("alice")
        window.from_chat_menu("Change password…")
        form = window.dialog("Change password")
        new = "a fresh and much longer passphrase"
        for entry, text in zip(form.entries, [GOOD_PASSWORD, new, new + "typo"]):
            entry.insert(0, text)
        form.buttons["Change"].invoke()
        window.dialog("Password not changed").buttons["OK"].invoke()  # the typo

        form = view.change_password()
        for entry, text in zip(form.entries, [GOOD_PASSWORD, new, new]):
            entry.insert(0, text)
        form.buttons["Change"].invoke()
        window.dialog("Password changed").buttons["OK"].invoke()
        elsewhere.expect_error("kicked")  # the account's other sessions end
        assert window.app.chat is not None and not window.app.chat.ended.is_set()
    finally:
        elsewhere.close()


def test_log_out_and_in_again(gui: Callable[..., Gui], servers: Callable[..., object]) -> None:
    window, first, bob = alice_sees_bob(gui, servers())
    try:
        window.from_chat_menu("Log out")
        bob.expect("leave", skip=(), username="alice", reason="quit")
        form = window.wait_for(lambda: window.app.form, "the connect form")
        assert form.value("Username") == "alice" and form.value("Password") == ""
        assert not first.winfo_exists()
        window.log_in()
        bob.expect("join", skip=(), username="alice")
        second = window.view
        assert second is not first
        bob.send({"type": "say", "text": "welcome back"})
        window.wait_for(lambda: "<bob> welcome back" in window.room(), "the new session's room")
    finally:
        bob.close()


def test_history_is_dimmed_and_older_messages_load_at_the_top(
        gui: Callable[..., Gui], servers: Callable[..., object]) -> None:
    server = servers(history__on_join=40, limits__messages_per_second=10_000,
                     limits__message_burst=10_000)
    add_user(server, "alice")
    add_user(server, "bob")
    alice = Client(server.address)
    try:
        alice.login("alice")
        alice.send(b"".join(b'{"type":"say","text":"m%03d"}\n' % n for n in range(120)))
        for _ in range(120):
            alice.expect("message")
    finally:
        alice.close()
    window = gui(server.address[1], username="bob")
    window.log_in()
    view = window.view
    room = view.conversations[""]
    window.wait_for(lambda: "<alice> m119" in window.room(), "the history at login")
    shown = [line for line in window.room().splitlines() if "<alice>" in line]
    assert [line[-4:] for line in shown] == [f"m{n:03d}" for n in range(80, 120)]
    first = room.text.search("m080", "1.0")
    assert "history" in room.text.tag_names(first)  # dimmed, not live
    # Scrolled to the top with the wheel, the list fetches what came before, page by page.
    def wheel_to_top() -> None:
        room.text.yview_moveto(0.0)
        room.text.event_generate("<Button-4>")  # the wheel, up, on X11

    wheel_to_top()
    window.wait_for(lambda: "m030" in window.room(), "an older page on scrolling up")
    wheel_to_top()
    window.wait_for(lambda: "that is the first message" in window.room(), "the first message")
    ids = [line[-4:] for line in window.room().splitlines() if "<alice>" in line]
    assert ids == [f"m{n:03d}" for n in range(120)]


def test_without_a_display_the_command_says_so_in_one_line(run_cli: Callable[..., object],
                                                           home: Path) -> None:
    env = {k: v for k, v in cli_env(home).items() if k != "DISPLAY"}
    result = run_cli("gui", "alice", env=env)
    assert_one_line_error(result, 1, "cannot open a window")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xdotool") is None or shutil.which("Xvfb") is None,
                    reason="needs xdotool, to type into the `authchat gui` process, and Xvfb: "
                           "it types a password, so only on a display of its own")
def test_authchat_gui_as_a_process(display: str, tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home, tls__enabled=True)
    add_user(server, "alice")
    add_user(server, "bob")
    env = cli_env(tmp_path / "client", DISPLAY=display, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    process = subprocess.Popen(
        [sys.executable, "-m", "authchat", "gui", "alice", "--port", str(server.address[1]),
         "--fingerprint", str(server.fingerprint)], env=env, stderr=subprocess.PIPE, text=True)
    bob = Client(server.address, cafile=home / CERT_FILENAME)
    try:
        bob.login("bob")
        focus_window(display, "^authchat$")
        xdotool(display, "type", "--delay", "5", GOOD_PASSWORD)
        xdotool(display, "key", "Return")
        bob.expect("join", skip=(), username="alice")
        focus_window(display, "^authchat: alice")
        xdotool(display, "type", "--delay", "5", "typed for real")
        xdotool(display, "key", "Return")
        bob.expect("message", text="typed for real", **{"from": "alice"})
        xdotool(display, "key", "ctrl+q")
        bob.expect("leave", skip=(), username="alice", reason="quit")
        assert process.wait(WAIT_S) == 0
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        bob.close()
        server.shutdown()


def xdotool(display: str, *args: str) -> None:
    done = subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display},
                          timeout=WAIT_S, capture_output=True, text=True)
    assert done.returncode == 0, f"xdotool {' '.join(args)}: {done.stderr.strip()}"


def focus_window(display: str, title: str) -> None:
    """Focus the shown window whose title matches, once there is one.

    xdotool's search reads every window's attributes, and stops with BadWindow
    when one of them is destroyed meanwhile, as the login form's windows are
    when the chat window replaces them: that search is asked again. Focusing
    waits for a shown window, since an unmapped one cannot take the focus.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            xdotool(display, "search", "--sync", "--onlyvisible", "--name", title,
                    "windowfocus", "--sync")
            return
        except AssertionError as e:
            if "BadWindow" not in str(e) or time.monotonic() > deadline:
                raise


# -- what a new user tripped over ------------------------------------------------

def test_a_late_answer_to_the_trust_question_still_logs_in(gui: Callable[..., Gui],
                                                          servers: Callable[..., Any]) -> None:
    """The server gives a login half a second here; the person takes longer
    than that over the fingerprint, which no longer costs them the login."""
    server = servers(tls__enabled=True, limits__handshake_timeout_s=0.5)
    add_user(server, "alice")
    window = gui(server.address[1], tls=True)
    window.log_in()
    trust = window.dialog("Trust this server?")
    # While the question is open the server holds no connection of ours whose
    # login clock could run out.
    window.wait_for(lambda: server.connection_count() == 0, "no connection held")
    trust.buttons["Trust"].invoke()
    window.wait_for(lambda: "logged in as alice" in window.room(), "logged in")
    assert not [d for d in dialogs(window.root) if d.title() == "Could not log in"]


@pytest.mark.slow
def test_after_a_restart_no_message_is_shown_twice(gui: Callable[..., Gui],
                                                   tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home)
    port = server.address[1]
    for name in ("alice", "bob"):
        add_user(server, name)
    bob = Client(server.address)
    try:
        bob.login("bob")
        bob.send({"type": "say", "text": "said before the restart"})
        bob.expect("message")
        bob.close()
        window = gui(port)
        window.log_in()
        window.wait_for(lambda: "said before the restart" in window.room(), "the history")
        server.shutdown()
        window.wait_for(lambda: "reconnecting" in window.room(), "the drop")
        server = start_server(home, server__port=port)
        window.wait_for(lambda: "reconnected" in window.room(), "the reconnect", timeout=30)
        bob = Client(server.address)
        bob.login("bob")
        bob.send({"type": "say", "text": "said after the restart"})
        window.wait_for(lambda: "said after the restart" in window.room(), "bob again")
        assert window.room().count("said before the restart") == 1, window.room()
        bob.close()

        # Then more is said while alice is away than the server gives back at
        # login: the room says so, and the window is connected all the same.
        elsewhere = start_server(home, history__on_join=2)  # while `port` is taken
        server.shutdown()
        bob = Client(elsewhere.address)
        bob.login("bob")
        for n in range(3):
            bob.send({"type": "say", "text": f"said while alice was away {n}"})
            while bob.recv().get("text") != f"said while alice was away {n}":
                pass  # what bob is given at login
        bob.close()
        elsewhere.shutdown()
        server = start_server(home, history__on_join=2, server__port=port)
        view = window.view
        window.wait_for(lambda: "away 2" in window.room(), "the last of them", timeout=30)
        assert "only the last messages follow" in window.room()
        assert "away 0" not in window.room()
        window.wait_for(lambda: view.listed == ["alice"], "alice listed again")
        assert view.online.cget("text") == "Online: 1"
        assert view.status.cget("text") == "connected"
    finally:
        bob.close()
        server.shutdown()


def test_a_disabled_account_is_said_once(gui: Callable[..., Gui],
                                         servers: Callable[..., Any]) -> None:
    server = servers()
    add_user(server, "alice")
    window = gui(server.address[1])
    window.log_in()
    window.wait_for(lambda: "logged in as alice" in window.room(), "logged in")
    server.store.set_disabled("alice", True, actor="test")
    ended = window.dialog("Disconnected")
    assert ended.message.cget("text") == "this account is disabled"
    assert window.room().count("account is disabled") == 1, window.room()


def test_a_new_password_too_short_is_refused_before_it_is_sent(
        gui: Callable[..., Gui], servers: Callable[..., Any]) -> None:
    server = servers(auth__min_password_length=20)
    window = gui(server.address[1], username="newcomer")
    window.log_in("sixteen chars ok", create=True)
    refused = window.dialog("Could not create the account")
    # The length the server's hello gave, in the words `users add` uses.
    assert refused.message.cget("text") == "password must be at least 20 characters"
    refused.buttons["OK"].invoke()
    window.log_in("a brand new long password", create=True)
    window.wait_for(lambda: "logged in as newcomer" in window.room(), "created")
