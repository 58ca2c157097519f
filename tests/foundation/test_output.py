"""--log-format json and NO_COLOR: the operator's logs, the demo's narration."""
from __future__ import annotations

import io
import logging

from tradewarden import cli, output


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_wins_over_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert output.color_enabled(Tty()) is True
    assert output.color_enabled(io.StringIO()) is False          # not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert output.color_enabled(Tty()) is False
    out = Tty()
    output.Console("text", out).emit("\033[1mbold\033[0m plain")
    assert out.getvalue() == "bold plain\n"


def test_console_json_lines_carry_no_escapes():
    out = io.StringIO()
    console = output.Console("json", out)
    console.emit("\n\033[1m== 3. The operator\033[0m", step=3)
    console.emit("   \033[32m✓\033[0m ready", ok=True)
    lines = output.json_lines(out.getvalue())
    assert [line["message"] for line in lines] == ["== 3. The operator", "✓ ready"]
    assert lines[0]["step"] == 3 and lines[1]["ok"] is True and all(line["level"] == "info" for line in lines)
    assert "\033" not in out.getvalue() and not console.interactive


def test_operator_logs_are_json_lines(capsys):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        output.configure_operator_logging("json", verbose=False)
        logging.getLogger("tradewarden.test").warning("run failed: %s", "503")
        err = capsys.readouterr().err
        (record,) = [r for r in output.json_lines(err) if r.get("message") == "run failed: 503"]
        assert record["severity"] == "warn" and record["timestamp"]
        output.configure_operator_logging("text", verbose=False)
        logging.getLogger("tradewarden.test").warning("plain again")
        err = capsys.readouterr().err
        assert "plain again" in err and not err.lstrip().startswith("{")
    finally:
        root.handlers[:], root.level = saved


def test_cli_log_format_before_or_after_the_subcommand(monkeypatch):
    monkeypatch.delenv(output.ENV_FORMAT, raising=False)
    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.setdefault("fmt", args.log_format) and 0)
    for argv, want in ((["run", "-A"], "text"), (["--log-format", "json", "run", "-A"], "json"),
                       (["run", "-A", "--log-format", "json"], "json")):
        seen.clear()
        cli.main(argv)
        assert seen["fmt"] == want, argv
    monkeypatch.setenv(output.ENV_FORMAT, "json")
    seen.clear()
    cli.main(["run", "-A"])
    assert seen["fmt"] == "json"
