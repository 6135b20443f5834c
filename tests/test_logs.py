"""One log format: hfserve, uvicorn, transformers and huggingface_hub through one handler."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import sys
from collections.abc import Iterator

# Read huggingface_hub's environment now (unset), before a test sets HF_HUB_DISABLE_PROGRESS_BARS:
# it is read once per process, at import, and would otherwise stay set for the whole session.
import huggingface_hub.constants
import huggingface_hub.utils
import pytest
from transformers.utils import logging as transformers_logging

from hfserve.logs import (
    LOG_FORMATS,
    JsonFormatter,
    adopt_library_loggers,
    configure_logging,
    log_config,
)

NAMES = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "transformers", "huggingface_hub")


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put back the handlers, levels, propagation and environment this test's configuration
    changed."""
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS is None
    bars = transformers_logging.is_progress_bar_enabled()
    names = (*NAMES, "ContinuousBatchingLogger", "py.warnings")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level) for n in names}
    propagate = {n: logging.getLogger(n).propagate for n in names}
    yield
    logging.captureWarnings(False)
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate[name]
    if bars:
        transformers_logging.enable_progress_bar()  # enables huggingface_hub's too


def _stream(logger: logging.Logger) -> io.StringIO:
    """Point the root's one handler (ours) at a buffer."""
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    return buffer


def test_formats_are_text_and_json() -> None:
    assert LOG_FORMATS == ("text", "json")


@pytest.mark.usefixtures("restore_logging")
def test_every_library_logs_once_in_the_text_format() -> None:
    configure_logging("info", "text")
    buffer = _stream(logging.getLogger())
    for name in (
        "hfserve.server",
        "uvicorn.error",
        "transformers.modeling_utils",
        "huggingface_hub.file_download",
    ):
        logging.getLogger(name).warning("hello from %s", name)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 4  # none doubled by a library's own handler
    for line, name in zip(
        lines,
        (
            "hfserve.server",
            "uvicorn.error",
            "transformers.modeling_utils",
            "huggingface_hub.file_download",
        ),
        strict=True,
    ):
        assert line.endswith(f" WARNING {name}: hello from {name}")
    assert logging.getLogger("transformers").handlers == []
    assert logging.getLogger("huggingface_hub").handlers == []


@pytest.mark.usefixtures("restore_logging")
def test_continuous_batching_logger_keeps_our_handler_only() -> None:
    configure_logging("info", "json")
    cb = logging.getLogger("ContinuousBatchingLogger")
    # transformers adds its own handler at import unless the logger already stops propagating.
    assert cb.propagate is False
    assert cb.handlers == logging.getLogger().handlers


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_level_logger_extras_and_traceback() -> None:
    configure_logging("debug", "json")
    buffer = _stream(logging.getLogger())
    log = logging.getLogger("hfserve.test")
    log.info("loaded %s", "m", extra={"model": "m", "seconds": 1.5})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "hfserve.test"
    assert first["message"] == "loaded m" and first["model"] == "m" and first["seconds"] == 1.5
    assert first["time"].endswith("+00:00") and isinstance(first["pid"], int)
    assert "ValueError: boom" in second["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_python_warnings_become_log_records() -> None:
    configure_logging("info", "text")
    buffer = _stream(logging.getLogger())
    logging.getLogger("py.warnings").warning("careful")
    assert "WARNING py.warnings: careful" in buffer.getvalue()


def test_worker_text_lines_name_the_process() -> None:
    fmt = log_config("info", "text", worker=True)["formatters"]["hfserve"]["format"]
    assert "[worker %(process)d]" in fmt
    assert log_config("info", "json", worker=True)["formatters"]["hfserve"] == {
        "()": "hfserve.logs.JsonFormatter"
    }


@pytest.mark.usefixtures("restore_logging")
def test_no_progress_bars_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a TTY
    transformers_logging.enable_progress_bar()
    configure_logging("info", "text")
    assert huggingface_hub.utils.are_progress_bars_disabled()
    assert not transformers_logging.is_progress_bar_enabled()
    # Worker processes inherit it, and read it when they import huggingface_hub.
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


@pytest.mark.usefixtures("restore_logging")
def test_an_operators_progress_bar_choice_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    transformers_logging.enable_progress_bar()
    configure_logging("info", "text")
    assert transformers_logging.is_progress_bar_enabled()


@pytest.mark.usefixtures("restore_logging")
def test_progress_bars_stay_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    transformers_logging.enable_progress_bar()
    monkeypatch.setattr(sys, "stderr", Tty())
    configure_logging("info", "text")
    assert transformers_logging.is_progress_bar_enabled()


@pytest.mark.usefixtures("restore_logging")
def test_adopting_twice_is_harmless() -> None:
    logging.config.dictConfig(log_config("info"))
    adopt_library_loggers()
    adopt_library_loggers()
    assert logging.getLogger("transformers").propagate is True


def test_json_formatter_without_extras() -> None:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "m"})
    assert set(json.loads(JsonFormatter().format(record))) == {
        "time",
        "level",
        "logger",
        "message",
        "pid",
    }
