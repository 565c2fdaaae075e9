"""What strangers can put into the pod's log: no query strings, no line per bad request.

uvicorn writes the request path *with* its query string into the access log and into its
WebSocket lines ("WebSocket /v1/runners/x/channel?token=..." 401): a runner token put in a URL
would land in a log file. ``QueryStringFilter`` cuts every path-like argument of a log record at
its ``?``; the pod has no endpoint that reads a query string, so nothing of use is lost.

uvicorn also logs a WARNING for every request it cannot parse; anyone can send those, so that
line is dropped here and the refusal is logged by the guard instead (``dispatcher.guard``: INFO,
one summary line per interval during a flood).
"""

from __future__ import annotations

import logging
import re

REDACTED = "?<query removed>"
_PATH_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']*")


def strip_query(text: str) -> str:
    """Every ``/path?query`` in ``text`` as ``/path?<query removed>``."""
    if "?" not in text:
        return text
    return _PATH_QUERY.sub(lambda m: m.group(1) + REDACTED, text)


# uvicorn's per-request lines that any stranger can cause; the guard logs these refusals itself
STRANGER_NOISE = frozenset({"Invalid HTTP request received."})


class QueryStringFilter(logging.Filter):
    """Redacts the query string of every path in a record's arguments; drops STRANGER_NOISE."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in STRANGER_NOISE:
            return False
        if isinstance(record.args, tuple):
            record.args = tuple(
                strip_query(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.msg, str) and not record.args:
            record.msg = strip_query(record.msg)
        return True


QUERY_FILTER = QueryStringFilter()

LOGGERS = ("uvicorn.access", "uvicorn.error")


def install() -> None:
    """Attach the filter to uvicorn's loggers (once; repeated calls change nothing)."""
    for name in LOGGERS:
        logging.getLogger(name).addFilter(QUERY_FILTER)
