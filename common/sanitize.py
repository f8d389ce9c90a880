"""Text from traffic made safe to show: terminals, logs, the web page; secrets masked.

Slice values, class labels and error details come from requests and model answers, so
they may hold ESC sequences (`ESC[2J` clears a terminal and can print a fake verdict),
carriage returns that overwrite a log line, or bidirectional overrides that reorder
what a reader sees. `printable` replaces each such character with a visible escape
(`\\x1b`, `\\u202e`); HTML escaping stays the template engine's job. Stored data is
never changed: the escape is applied where text is shown.
"""

from __future__ import annotations

import logging
import re

# C0 controls (tab and newline included: one value is one line), DEL, C1 controls, and
# the Unicode marks that change the display order or hide text (bidi embeddings,
# overrides and isolates, LRM/RLM/ALM, zero-width and line/paragraph separators).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` as one line that cannot move the cursor, recolour or reorder a display."""
    return _UNSAFE.sub(_escape, str(text))


_FORMATTER = logging.Formatter()  # formats tracebacks as the handlers would


class PrintableLogs(logging.Filter):
    """Makes every log message one printable line: a request cannot forge or hide log
    lines. Applied on the handlers (so records of every logger pass it); a traceback
    keeps its lines, each of them printable (an exception message may quote traffic).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its printable form (always keeps the record)."""
        message = record.getMessage()
        shown = printable(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            text = _FORMATTER.formatException(record.exc_info)
            record.exc_text = "\n".join(printable(line) for line in text.splitlines())
        return True


def install_log_filter() -> None:
    """Add PrintableLogs to every handler of the root logger (after logging is set up)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PrintableLogs) for f in handler.filters):
            handler.addFilter(PrintableLogs())
