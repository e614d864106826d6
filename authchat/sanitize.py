"""Making text from other people safe to write to a log or a terminal.

Anything a client controls (usernames, messages, reasons) may hold newlines,
terminal escape sequences, bidi controls or invisible characters. Written raw,
they could forge log lines, retitle or wipe a terminal, make text read
backwards, or make two texts that differ look the same (a link, a command to
copy). `escape` writes each such character as a visible \\x or \\u escape
instead; every client shows text through it, so all show it alike.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

# C0 controls but newline; then C1 controls, DEL, line/paragraph separators,
# bidi marks, embeddings, overrides and isolates (the "Trojan Source" set), and
# lone surrogates. And what draws nothing: the soft hyphen (nothing hyphenates
# a chat line), the Mongolian vowel separator, the zero-width space, the word
# joiner and invisible operators (U+2060-2064, with U+2065, unassigned, and
# the deprecated format controls U+206A-206F), and the BOM.
_UNSAFE_BUT_NEWLINE_CHARS = (r"\x00-\x09\x0b-\x1f\x7f-\x9f\xad\u061c\u180e\u200b\u200e\u200f"
                             r"\u2028\u2029\u202a-\u202e\u2060-\u206f\ufeff\ud800-\udfff")
# The zero-width non-joiner and joiner draw nothing either, but a message needs
# them: they build emoji sequences (a woman at a laptop is three characters)
# and Persian and Indic spellings. Message text keeps them; a line of its own
# (a log line, a name, a reason) shows them as escapes like the rest.
_JOINERS = r"\u200c\u200d"
_UNSAFE = re.compile(rf"[\n{_UNSAFE_BUT_NEWLINE_CHARS}{_JOINERS}]")
_UNSAFE_BUT_NEWLINE = re.compile(rf"[{_UNSAFE_BUT_NEWLINE_CHARS}]")


def escape(text: str) -> str:
    """`text` on one line, with every unsafe character written as an escape."""
    return _UNSAFE.sub(_escape_match, text)


def escape_keeping_newlines(text: str) -> str:
    """Like `escape`, but newlines and joiners stay: for message text, which may
    run over lines and hold emoji sequences."""
    return _UNSAFE_BUT_NEWLINE.sub(_escape_match, text)


def escape_json(text: str) -> str:
    """JSON text with every unsafe character written as a JSON \\u escape.

    json.dumps(ensure_ascii=False) escapes C0 controls but leaves DEL, C1
    controls, separators, bidi controls, invisible characters and lone
    surrogates raw; as escapes they cannot act on a terminal, and JSON made
    from decoded text (where a surrogate is always alone) decodes to the same
    value.
    """
    return _UNSAFE.sub(_json_escape_match, text)


# A key of this process's own: a redacted name can be matched with itself in
# one server's log, but not guessed back from it by a dictionary of names or
# passwords, and not matched across restarts.
_REDACTION_KEY = secrets.token_bytes(16)


def redacted(text: str) -> str:
    """A short keyed hash of `text`, for a log line that must not show it: a
    name that is no account's is often a password typed into the wrong field."""
    digest = hmac.new(_REDACTION_KEY, text.lower().encode("utf-8", "surrogatepass"),
                      hashlib.sha256)
    return "#" + digest.hexdigest()[:8]


def _json_escape_match(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _escape_match(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
