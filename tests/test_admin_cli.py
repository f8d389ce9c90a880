"""`shadowtrial promote / reject / rollback / candidates` against a real admin server:
what they print and their exit codes (0 done, 1 refused, 2 usage or connection errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from admin_harness import Trial, trial
from servers import free_port

from shadowtrial.cli import main


def _config(tmp_path: Path, t: Trial, prefix: str, token_env: str | None = None) -> str:
    """A config file pointing at the trial's admin port and (its) token variable."""
    host_port = t.admin().removeprefix("http://")
    token_env = token_env or f"ST_TOKEN_{prefix.upper()}"
    path = tmp_path / f"{token_env}.toml"
    path.write_text(
        f'[proxy]\nadmin_listen = "{host_port}"\nprimary = "{t.primary_url}"\n'
        f'[redis]\nprefix = "{prefix}"\n[admin]\ntoken_env = "{token_env}"\n'
    )
    return str(path)


def test_decisions_print_verdicts_and_exit_0_or_1(
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trial(redis_url, prefix, monkeypatch, tokens="cli-token") as t:
        conf = _config(tmp_path, t, prefix)

        assert main(["promote", "v2", "-c", conf]) == 1
        out = capsys.readouterr().out
        assert "refused: the gate refuses to promote v2" in out
        assert "gate: insufficient" in out and "  - insufficient: only 0 pairs" in out

        assert main(["promote", "v2", "--force", "-c", conf]) == 0
        out = capsys.readouterr().out
        assert f"promoted v2 (forced): new requests go to {t.candidate_url}" in out
        assert t.replicas[0].app.routing.primary in {t.primary_url, t.candidate_url}

        assert main(["candidates", "-c", conf]) == 0
        out = capsys.readouterr().out
        assert f"primary: {t.candidate_url} (v2)" in out and "promoted" in out

        assert main(["rollback", "-c", conf]) == 0
        assert f"rolled back: new requests go to {t.primary_url}" in capsys.readouterr().out
        assert main(["rollback", "-c", conf]) == 1
        assert "nothing to roll back to" in capsys.readouterr().out

        assert main(["reject", "v2", "-c", conf]) == 1  # rolled back: already rejected
        assert "already rejected" in capsys.readouterr().out

        assert main(["candidates", "--json", "--admin", t.admin(), "-c", conf]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [c["state"] for c in listed["candidates"]] == ["rejected"]


def test_usage_and_connection_errors_exit_2(
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trial(redis_url, prefix, monkeypatch, tokens="cli-token") as t:
        conf = _config(tmp_path, t, prefix)
        assert main(["promote", "nope", "--force", "-c", conf]) == 2
        assert "404" in capsys.readouterr().err

        dead = f"http://127.0.0.1:{free_port()}"
        assert main(["rollback", "--admin", dead, "-c", conf]) == 2
        assert "cannot reach the admin API" in capsys.readouterr().err
        assert main(["rollback", "--admin", "127.0.0.1:1", "-c", conf]) == 2
        assert main(["candidates", "-c", str(tmp_path / "missing.toml")]) == 2

        # The client's token (from its own variable here) is not the server's.
        monkeypatch.setenv("ST_CLIENT_TOKEN", "wrong-token")
        assert main(["reject", "v2", "-c", _config(tmp_path, t, prefix, "ST_CLIENT_TOKEN")]) == 2
        assert "401" in capsys.readouterr().err

        monkeypatch.delenv(f"ST_TOKEN_{prefix.upper()}")
        assert main(["reject", "v2", "-c", conf]) == 2
        assert f"ST_TOKEN_{prefix.upper()}" in capsys.readouterr().err  # says what to set

        with pytest.raises(SystemExit) as usage:
            main(["promote"])
        assert usage.value.code == 2
        capsys.readouterr()
        assert t.decisions() == []  # none of it decided anything


def test_named_tokens_choose_with_as(
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:  # alice=...,bob=...
        conf = _config(tmp_path, t, prefix)
        assert main(["reject", "v2", "-c", conf]) == 2
        assert "choose with --as" in capsys.readouterr().err
        assert main(["reject", "v2", "--as", "bob", "-c", conf, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["actor"] == "bob"
        assert t.decisions()[0]["actor"] == "bob"
