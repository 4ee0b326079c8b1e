"""The primary's log lines (docs/cli.md, "Log lines").

One line per event on fd 2, in the format libforkhost writes
(forkhost/log.h: ``fh_log_write``), so that the primary's lines (start,
ready, reopen, stop) and the template's (launch, exit, refusal, reopen)
have one format and one source.
"""

from __future__ import annotations

from . import _wire
from ._native import ffi, lib
from ._errors import ForkhostError

# "error", "warning", "info", "debug", in the order of their levels, and
# the default (forkhost/log.h, through _wire: no library loaded for them).
LEVELS: tuple[str, ...] = _wire.LOG_LEVELS
DEFAULT: str = _wire.LOG_DEFAULT


def level(name: str) -> int:
    """The level of a name in LEVELS (ForkhostError for another)."""
    n = lib.fh_log_level_parse(name.encode())
    if n < 0:
        raise ForkhostError(f"invalid log level {name!r}: use one of "
                            f"{', '.join(LEVELS)}")
    return n


def quote(text: str) -> str:
    """text as a line's string value (a JSON string, as C writes it)."""
    raw = text.encode(errors="surrogateescape")
    buf = ffi.new("char[]", 6 * len(raw) + 3)
    n = lib.fh_log_quote(buf, len(buf), raw)
    return ffi.string(buf, n).decode(errors="surrogateescape")


def write(threshold: int, lvl: int, prefix: str, event: str, **fields) -> None:
    """One line for event on fd 2, if lvl is logged at threshold; str
    values are quoted, others written as they print."""
    if lvl > threshold:
        return
    text = " ".join(f"{k}={quote(v) if isinstance(v, str) else v}"
                    for k, v in fields.items())
    lib.fh_log_write(2, lvl, prefix.encode(), event.encode(), text.encode(
        errors="surrogateescape"))
