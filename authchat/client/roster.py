"""Who is online, as a client learns it from welcome, join, leave and who.

Pure bookkeeping, no I/O: a front end feeds it every server frame and redraws
its list when `apply` says something changed. Names are unique ignoring case
(the server's rule), and each is shown in the form the server sent.
"""

from __future__ import annotations

from typing import Any

UNKNOWN_ROLE = ""


class Roster:
    """The online users and, once a `who` has told us, their roles."""

    def __init__(self) -> None:
        self._people: dict[str, tuple[str, str]] = {}  # folded name -> (name, role)

    def apply(self, frame: dict[str, Any]) -> bool:
        """Take in one server frame; True if the list changed."""
        kind = frame.get("type")
        users = frame.get("users")
        users = users if isinstance(users, list) else []  # a broken server's frame: no one
        if kind == "welcome":
            return self._replace([(name, self.role(str(name))) for name in users])
        if kind == "who":
            return self._replace([(user.get("username"), user.get("role", UNKNOWN_ROLE))
                                  for user in users if isinstance(user, dict)])
        name = frame.get("username")
        if not isinstance(name, str):
            return False
        if kind == "join" and name.casefold() not in self._people:
            self._people[name.casefold()] = (name, str(frame.get("role", UNKNOWN_ROLE)))
            return True
        if kind == "leave":
            return self._people.pop(name.casefold(), None) is not None
        return False

    def _replace(self, people: list[tuple[Any, Any]]) -> bool:
        fresh = {str(name).casefold(): (str(name), str(role)) for name, role in people
                 if isinstance(name, str)}
        changed = fresh != self._people
        self._people = fresh
        return changed

    def names(self) -> list[str]:
        """Everyone online, sorted as a person would look for them."""
        return sorted((name for name, _ in self._people.values()), key=str.casefold)

    def role(self, name: str) -> str:
        return self._people.get(name.casefold(), ("", UNKNOWN_ROLE))[1]

    def roles_known(self) -> bool:
        return all(role != UNKNOWN_ROLE for _, role in self._people.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._people

    def __len__(self) -> int:
        return len(self._people)


def dm_peer(frame: dict[str, Any], me: str) -> str:
    """The other person in a direct message: its sender, or for our own, its recipient."""
    sender, recipient = str(frame.get("from", "")), str(frame.get("to", ""))
    return recipient if sender.casefold() == me.casefold() else sender
