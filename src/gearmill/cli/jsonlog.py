"""Log records as one JSON object per line (``gearmill serve --log-format json``).

For log shippers (journald's JSON, Loki, Elasticsearch, docker logs): every
line parses on its own. Keys: ``time`` (UTC, ISO 8601 with microseconds),
``level`` (gearmand's name: NOTICE where gearmand says NOTICE), ``logger``,
``message``, then the record's extra fields, and ``exception`` with a traceback.
"""

from __future__ import annotations

import datetime
import json
import logging

# what every LogRecord carries; anything else was given as extra=
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "gearman_level",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, object] = {
            "time": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": getattr(record, "gearman_level", None) or record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # default=str: an extra value JSON cannot carry is still written, as text
        return json.dumps(line, ensure_ascii=False, default=str)
