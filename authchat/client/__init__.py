"""Everything only clients use: the client library and the front ends over it.

- `link`: one connection (TCP, TLS trust, the server's hello);
- `session`: probe, login, register, and `Chat`, a session that survives drops;
- `commands`: what a typed line means (slash commands) and the request it sends;
- `display`: how an event reads, for a terminal or a window;
- `roster`: who is online, from the session's events;
- `script`: the scripting mode of `authchat connect`, on pipes;
- `tui`: the chat screen in a terminal (prompt_toolkit);
- `gui/`: the desktop client (tkinter).

The server's modules never import from here. The names below are the
library's public face, for front ends and scripts.
"""

from .link import (
    ClientError,
    ClientOptions,
    Confirm,
    Link,
    ServerError,
    TrustError,
    describe_error,
    open_link,
)
from .session import (
    Chat,
    Event,
    Notice,
    login,
    password_policy,
    probe,
    register,
    registration_problem,
)

__all__ = ["Chat", "ClientError", "ClientOptions", "Confirm", "Event", "Link", "Notice",
           "ServerError", "TrustError", "describe_error", "login", "open_link",
           "password_policy", "probe", "register", "registration_problem"]
