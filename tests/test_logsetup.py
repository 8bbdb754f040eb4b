"""Log formats: syslog priority prefixes for the journal, and the automatic choice."""

from __future__ import annotations

import io
import json
import os
import pty
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from llm_supervisor.logsetup import configure_logging, get_logger, resolve_format


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _journal_stream_of(stream: TextIO) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_lines_carry_syslog_priorities() -> None:
    out = io.StringIO()
    assert configure_logging("journal", "debug", out) == "journal"
    log = get_logger("test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("x")
    lines = out.getvalue().splitlines()
    # One line per event, even with a traceback: the journal splits entries at newlines.
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["d", "i", "w", "e", "c", "x"]
    assert "RuntimeError: boom" in events[-1]["exception"]


def test_level_filter_applies_to_journal_lines() -> None:
    out = io.StringIO()
    configure_logging("journal", "warning", out)
    log = get_logger("test")
    log.info("quiet")
    log.warning("gpu.pressure", gpu=1, used=0.97)
    (line,) = out.getvalue().splitlines()
    assert line.startswith("<4>")
    assert json.loads(line[3:])["gpu"] == 1


def test_auto_picks_journal_when_journal_stream_is_this_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream_of(stream))
        assert resolve_format("auto", stream) == "journal"
        assert configure_logging("auto", "info", stream) == "journal"


def test_auto_ignores_journal_stream_of_another_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine we spawn would see our JOURNAL_STREAM while its stderr is a pipe to us.
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "pipe").open("w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream_of(journal))
        assert resolve_format("auto", other) == "json"


@pytest.mark.parametrize("value", ["", "garbage", "1:2:3", "0:0"])
def test_auto_without_a_usable_journal_stream_is_json(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with (tmp_path / "stderr").open("w") as stream:
        assert resolve_format("auto", stream) == "json"


def test_auto_on_a_terminal_is_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert resolve_format("auto", tty) == "console"
    finally:
        os.close(leader)
        os.close(follower)


def test_stream_without_fileno_is_not_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert resolve_format("auto", io.StringIO()) == "json"


def test_explicit_format_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert resolve_format("json", io.StringIO()) == "json"
    assert resolve_format("journal", io.StringIO()) == "journal"
