"""How the long-running processes (`serve`, `worker`) log: one line per event on stderr,
as text for people or, with `--log-format json`, one JSON object per line for collectors.

JSON lines carry time (UTC, ISO 8601), level, logger, pid, message and, when there is
one, the traceback as `exc`. The message is the same text the text format prints (URLs
in it are already masked by common.urls), and JSON encoding escapes every control
character, so a value from traffic can neither forge a log line nor drive a terminal.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from common.sanitize import PrintableLogs
from common.urls import mask_urls_in

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
FORMATS = ("text", "json")
# JSON escapes only U+0000-U+001F; DEL, the C1 controls (U+009B starts a terminal escape)
# and U+2028/U+2029 (line breaks to str.splitlines and to JavaScript) are escaped too.
_ALSO_ESCAPED = {c: f"\\u{c:04x}" for c in (*range(0x7F, 0xA0), 0x2028, 0x2029)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode().translate(_ALSO_ESCAPED)


class MaskUrls(logging.Filter):
    """Masks credentials in any URL a log message carries (an exception's text quoting a
    URL with a password, say), on top of the call sites that mask what they log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls_in(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record at `level` or above to stderr in format `fmt` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskUrls())
    handler.addFilter(PrintableLogs())  # text from traffic never forges or hides a line
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def current_format() -> str:
    """The format the root logger writes in now (a spawned process repeats it)."""
    handlers = logging.getLogger().handlers
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in handlers) else "text"
