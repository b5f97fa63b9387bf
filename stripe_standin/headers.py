"""What a scripted response header may be: written as is onto the wire, it must not be able
to end the header block early (CR, LF), smuggle a second message, or break the framing."""

from __future__ import annotations

import re
from collections.abc import Mapping

# RFC 9110 token characters: a header name is one token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and tab: no CR, LF, NUL, other control characters, DEL or non-ASCII
# (http.server writes latin-1 and would fail mid-response on the rest).
_VALUE = re.compile(r"[\t\x20-\x7e]*")
# The server frames every response itself; a second copy would make it ambiguous.
FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def header_problem(headers: Mapping[str, str]) -> str | None:
    """Why the first unsafe header cannot be sent, or None when all can."""
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            return f"header name {name!r} is not an HTTP token"
        if name.lower() in FRAMING:
            return f"header {name} is set by the server itself"
        if not _VALUE.fullmatch(value):
            return f"header {name} has a control or non-ASCII character in its value {value!r}"
    return None
