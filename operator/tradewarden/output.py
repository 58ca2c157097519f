"""How the command line talks: log format (text or JSON lines) and colour (off under NO_COLOR).

- ``--log-format json`` (or ``TRADEWARDEN_LOG_FORMAT=json``): the operator logs one JSON object per
  line (kopf's JSON formatter: ``message``, ``levelname``, ``timestamp``, ``object``...), and the demo
  prints its narration as JSON lines (``time``, ``level``, ``message``) with no colour and no spinner.
- ``NO_COLOR`` set to anything non-empty (https://no-color.org), a ``TERM=dumb`` or output that is not
  a terminal: no ANSI escapes anywhere (``./tw`` follows the same rule in bash).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
from typing import IO, Any

FORMATS = ("text", "json")
ENV_FORMAT = "TRADEWARDEN_LOG_FORMAT"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def default_format() -> str:
    value = os.environ.get(ENV_FORMAT, "text").strip().lower()
    return value if value in FORMATS else "text"


def color_enabled(stream: IO[Any] | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def configure_operator_logging(fmt: str, verbose: bool) -> None:
    """kopf's logging in the chosen format (text: kopf's own, with the object prefix)."""
    import kopf

    if fmt == "json":
        kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False, log_refkey="object")
    else:
        kopf.configure(verbose=verbose, log_prefix=True)


class Console:
    """Human narration (the demo): coloured text, plain text, or JSON lines."""

    def __init__(self, fmt: str = "text", stream: IO[Any] | None = None) -> None:
        self.fmt = fmt if fmt in FORMATS else "text"
        self._stream = stream
        self.color = self.fmt == "text" and color_enabled(self.stream)
        self.interactive = self.fmt == "text" and _isatty(self.stream)   # spinners and \r rewrites

    @property
    def stream(self) -> IO[Any]:
        return self._stream if self._stream is not None else sys.stdout

    def style(self, code: str) -> str:
        return code if self.color else ""

    def emit(self, text: str, *, level: str = "info", err: bool = False, **fields: Any) -> None:
        out = sys.stderr if err and self._stream is None else self.stream
        if self.fmt == "json":
            record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                      "level": level, "message": strip_ansi(text).strip(), **fields}
            if record["message"] or fields:
                print(json.dumps(record, ensure_ascii=False), file=out, flush=True)
            return
        print(text if self.color else strip_ansi(text), file=out, flush=True)


def _isatty(stream: IO[Any]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON (raises on a line that is not): for tests and tools."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]

