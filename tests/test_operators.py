"""What an operator runs the processes with: `shadowtrial --version`, and
`--log-format json` (one JSON object per line, control characters escaped, no secrets)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import orjson
import pytest
from servers import free_port, wait_for_port

from common import logs
from shadowtrial.cli import main

ROOT = Path(__file__).resolve().parent.parent
SECRET = "SECRET-REDIS-PW-0201"


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"shadowtrial {version}"


def test_a_json_log_line_is_one_object_with_control_characters_escaped() -> None:
    record = logging.LogRecord("shadowtrial.x", logging.WARNING, __file__, 1,
                               "value %s", ("a\nb\x1b[2J\u2028c\x9b",), None)  # fmt: skip
    try:
        raise ValueError("boom\nline")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert len(line.splitlines()) == 1 and "\x1b" not in line and "\x9b" not in line
    parsed = orjson.loads(line)
    assert parsed["message"] == "value a\nb\x1b[2J\u2028c\x9b" and parsed["level"] == "WARNING"
    assert parsed["logger"] == "shadowtrial.x" and "ValueError: boom" in parsed["exc"]
    assert parsed["time"].endswith("Z")


def test_serve_logs_json_lines_without_secrets(tmp_path: Path) -> None:
    data, admin = free_port(), free_port()
    config = tmp_path / "shadowtrial.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{data}"\nadmin_listen = "127.0.0.1:{admin}"\n'
        f'primary = "http://user:{SECRET}@127.0.0.1:1"\n'
        f'[redis]\nurl = "redis://127.0.0.1:1/0?password={SECRET}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTRIAL_")}
    env.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config),
               "--log-format", "json"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(admin, timeout_s=30)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    lines = [orjson.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all(set(x) >= {"time", "level", "logger", "pid", "message"} for x in lines)
    messages = "\n".join(x["message"] for x in lines)
    assert "using Redis at redis://127.0.0.1:1/0?password=***" in messages
    assert "primary http://user:***@127.0.0.1:1" in messages
    assert SECRET not in err


def test_any_url_a_log_line_quotes_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """An exception text that quotes a URL with credentials (aiohttp's do) is masked by the
    handler, whichever call site logged it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("INFO", "json")
    try:
        logging.getLogger("shadowtrial.t").warning(
            "failed: %s", f"url='http://u:{SECRET}@h:1/x?token={SECRET}&a=1' (unix:///s.sock)"
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert SECRET not in err
    assert "http://u:***@h:1/x?token=***&a=1" in orjson.loads(err)["message"]
    assert "unix:///s.sock" in err
