"""Who is online, as a client learns it from welcome, join, leave and who.

Pure bookkeeping, no I/O: a front end feeds it every server event and redraws
its list when `apply` says something changed. Names are unique ignoring case
(the server's rule), and each is shown in the form the server sent.
"""

from __future__ import annotations

from ..protocol import DirectMessage, Join, Leave, ServerEvent, Welcome, WhoList

UNKNOWN_ROLE = ""


class Roster:
    """The online users and, once a `who` has told us, their roles."""

    def __init__(self) -> None:
        self._people: dict[str, tuple[str, str]] = {}  # folded name -> (name, role)

    def apply(self, event: ServerEvent) -> bool:
        """Take in one server event; True if the list changed."""
        match event:
            case Welcome(users=names):
                return self._replace([(name, self.role(name)) for name in names])
            case WhoList(users=users):
                return self._replace([(user.username, user.role) for user in users])
            case Join(username=name, role=role) if name.casefold() not in self._people:
                self._people[name.casefold()] = (name, role)
                return True
            case Leave(username=name):
                return self._people.pop(name.casefold(), None) is not None
        return False

    def _replace(self, people: list[tuple[str, str]]) -> bool:
        fresh = {name.casefold(): (name, role) for name, role in people}
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


def dm_peer(dm: DirectMessage, me: str) -> str:
    """The other person in a direct message: its sender, or for our own, its recipient."""
    return dm.to if dm.sender.casefold() == me.casefold() else dm.sender
