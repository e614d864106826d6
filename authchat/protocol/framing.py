"""Line framing: a byte stream cut into frames, and a frame put on the wire.

A frame is one JSON object per line (UTF-8, ending in "\\n"; "\\r\\n" is
accepted). `FrameDecoder` never buffers more than `max_frame_bytes` of an
unfinished line: past that the framing is lost and the only answer is
`frame_too_large` and a close. Both sides use this module.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ErrorCode

DEFAULT_MAX_FRAME_BYTES = 16 * 1024
# The deepest frame either side sends is a history page (object > list >
# object). json's decoder recurses once per level, and deep enough input
# overflows the C stack before any RecursionError on some interpreters
# (3.13 among them), so deeper frames are refused before they are decoded.
MAX_NESTING = 3

Frame = dict[str, Any]  # one decoded JSON object, before it is checked


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow."""

    def __init__(self, code: ErrorCode, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


class FrameDecoder:
    """Cuts a byte stream into lines, holding at most `max_frame_bytes` of one."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already known to hold no newline

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line without its line ending, or None if more data is needed.

        Raises:
            ProtocolError: frame_too_large (fatal) once a line passes the limit.
        """
        newline = self._buffer.find(b"\n", self._scanned)
        if newline < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_frame_bytes:
                raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                    f"frame longer than {self.max_frame_bytes} bytes", fatal=True)
            return None
        line = bytes(self._buffer[:newline])
        del self._buffer[:newline + 1]
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                f"frame longer than {self.max_frame_bytes} bytes", fatal=True)
        return line

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# A JSON string, escapes included, or an unterminated one to the end of the
# line. Possessive, so a match never gives back what it took, and every quote
# starts one, so a failed match never starts over at the next quote: the
# scan is linear however the quotes and backslashes fall. (A pattern that
# could fail took half a second on 16 KiB of escaped quotes.) An
# unterminated string hides no nesting: json stops there too.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nests_deeper_than(line: bytes, limit: int) -> bool:
    """Whether `line`'s arrays and objects nest more than `limit` deep, found
    in time linear in its length; brackets inside strings do not count."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False  # the usual frame: too few brackets to nest that deep
    depth = 0
    for byte in _JSON_STRING.sub(b"", line).translate(None, _NOT_A_BRACKET):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder and one encoder for every frame: json.loads and json.dumps with
# any option build a new one per call, a fifth of the server's time at load.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def decode_frame(line: bytes) -> Frame:
    """Parse one line into a JSON object.

    Raises:
        ProtocolError: bad_frame for anything that is not a UTF-8 JSON object.
    """
    if nests_deeper_than(line, MAX_NESTING):
        raise ProtocolError(ErrorCode.BAD_FRAME,
                            f"frame nests deeper than {MAX_NESTING} levels")
    try:
        text = line.decode("utf-8")
        frame = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid UTF-8") from None
    except (ValueError, RecursionError):
        # RecursionError: json raises it, not ValueError, on nesting too deep
        # for the interpreter's limit (a second line of defence after the scan)
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not a JSON object")
    return frame


def encode(frame: Frame) -> bytes:
    """One frame on the wire: compact JSON and a newline."""
    return _ENCODER.encode(frame).encode("utf-8") + b"\n"


def json_string(text: str) -> str:
    """`text` as a JSON string, quotes included, exactly as `encode` writes it."""
    return _ENCODER.encode(text)
