"""One log format for hfserve and the libraries it runs: uvicorn, transformers, huggingface_hub.

transformers and huggingface_hub attach their own stderr handlers (transformers also stops its
loggers propagating, and its continuous-batching logger gets a handler and format of its own),
so without this a server log mixes three formats, doubles some lines and draws tqdm bars into
files. ``configure_logging`` routes them all through one root handler, in text or JSON.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
from datetime import UTC, datetime
from typing import Any, Literal, get_args

__all__ = [
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "WORKER_TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "adopt_library_loggers",
    "configure_logging",
    "log_config",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The same format with the process id, for the worker processes of `--workers N`.
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"
# transformers.generation.continuous_batching adds its own handler to this logger at import
# unless the logger already stops propagating: configured first, it keeps ours alone.
_CB_LOGGER = "ContinuousBatchingLogger"
# Libraries that attach a handler to their root logger when they are imported.
_LIBRARY_LOGGERS = ("transformers", "huggingface_hub")
_PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"
# The attributes every LogRecord has; anything else was passed as `extra=` and goes to JSON.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, extras and the traceback.

    Written here rather than taken from python-json-logger: it is a dozen lines over the
    standard library, and log pipelines need only these stable keys.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_config(
    level: str, log_format: LogFormat = "text", *, worker: bool = False
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` schema: every logger to one stderr handler in one format.

    Args:
        level: the root level (``info``, ``debug`` ...).
        log_format: ``text`` for people, ``json`` (one object per line) for log pipelines.
        worker: name the process in text lines (JSON lines always carry ``pid``).
    """
    text = WORKER_TEXT_FORMAT if worker else TEXT_FORMAT
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": text}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"hfserve": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "hfserve",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own default config gives these handlers of their own: propagate instead.
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            _CB_LOGGER: {"handlers": ["stderr"], "propagate": False},
        },
    }


def adopt_library_loggers() -> None:
    """Take back the handlers transformers and huggingface_hub added: their lines go to root.

    Importing them is what adds the handlers, so this imports their logging modules first
    (neither imports torch).
    """
    import huggingface_hub.utils.logging  # noqa: F401 - adds its handler on import
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def _disable_progress_bars() -> None:
    """No tqdm bars in a log that is not a terminal: they are one line per redraw in a file."""
    if _PROGRESS_ENV in os.environ:
        return  # the operator chose (huggingface_hub warns when told otherwise in code)
    # Read when huggingface_hub is imported (transformers asks huggingface_hub), and inherited by
    # worker processes; the calls below cover a process that imported them already.
    os.environ[_PROGRESS_ENV] = "1"
    from huggingface_hub.utils.tqdm import disable_progress_bars
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bars()
    disable_progress_bar()  # type: ignore[no-untyped-call]


def configure_logging(level: str, log_format: LogFormat = "text", *, worker: bool = False) -> None:
    """Set up logging for a server process: one format on stderr, no bars when not a TTY."""
    logging.config.dictConfig(log_config(level, log_format, worker=worker))
    logging.captureWarnings(True)
    if not sys.stderr.isatty():
        _disable_progress_bars()
    adopt_library_loggers()
