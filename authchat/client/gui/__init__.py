"""The desktop client, on tkinter: a connect form, then the chat window.

Theory of operation. Tk may only be touched from the thread that runs its
main loop, and that thread must never wait on the network, or the window
freezes. So:

- every network call (connect, log in, each request) runs on one worker
  thread, in order;
- everything the network produces (server frames and connection notices from
  the Chat's reader thread, the worker's answers) comes back to the Tk thread
  as plain data in a mailbox, which the Tk thread drains with `after()`, a
  bounded batch per tick, so that a flood of messages still leaves it time to
  redraw and to read keys;
- no other thread holds anything of Tk's, and the window's objects are
  collected on the Tk thread (threads.py says why);
- dialogs never run a nested event loop: their answer is a callback, so the
  network keeps flowing while one is open (and a test can press its buttons).

UI only: connecting, the trust rules, reconnecting and the protocol are
link.py's and session.py's; what a typed line means and how a request looks are
commands.py's; how an event reads is display.py's; who is online is
roster.py's.
"""

from .app import App, collected_here, run
from .widgets import NoDisplay

__all__ = ["App", "NoDisplay", "collected_here", "run"]
