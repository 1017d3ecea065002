"""Structured logging: one pipeline for structlog and stdlib loggers, PII masked before rendering.

Every line — from ``get_logger(...)``, uvicorn, SQLAlchemy, httpx or any stdlib logger — goes
through the same processors and one handler on the root logger:

    contextvars (request_id, checkout_id) → level → logger name → ISO-8601 UTC timestamp
    → stack/exception text → PII masking → JSON line (production) or console line (development)

JSON mode writes exactly one JSON object per line with at least ``event``, ``level``,
``timestamp`` and ``logger``. Service code logs stable dotted event names
(``log.info("checkout.transition", checkout_id=..., to="authorized")``); lines from other
libraries carry their message as ``event``.

Invariants:

- Masking runs after exceptions are formatted, so tracebacks are masked like any other value,
  and before the record reaches any stdlib handler, so pytest's ``caplog`` sees masked values too.
- ``configure_logging`` is idempotent: it replaces only the handler it installed itself and leaves
  other handlers (pytest's capture handlers) alone. Loggers are not cached, so loggers obtained
  before a reconfiguration follow the new configuration.
- Correlation ids live in :mod:`contextvars` via :mod:`structlog.contextvars`: asyncio copies the
  context into each task, so ids bound while handling a request stay with that request's task and
  the tasks it starts. Long-lived workers must bind per unit of work and call
  :func:`clear_correlation` (or use :func:`bound_correlation`) before the next one.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from app.observability.pii import REDACTED, KeyKind, classify_key, is_msisdn, mask_phone, mask_text

__all__ = [
    "bind_checkout_id",
    "bind_request_id",
    "bound_correlation",
    "clear_correlation",
    "configure_logging",
    "get_logger",
    "mask_event_dict",
]

# Nested structures deeper than this are cut off rather than walked (and cycles end here).
_MAX_DEPTH = 12
_TRUNCATED = "[truncated]"

# Keys that ProcessorFormatter and format_exc_info own; their values are not log data.
_INTERNAL_KEYS = frozenset({"_record", "_from_structlog", "exc_info"})

# Library loggers that install their own handlers or are too chatty below WARNING.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# Chatty libraries: warnings and errors only. httpx logs every request line at INFO; the Vipps
# client's own vipps.call.* events say what matters without URLs.
_QUIET_LOGGERS = ("httpcore", "httpx", "asyncio", "aiosqlite")

# Marks the one handler configure_logging owns on the root logger.
_HANDLER_NAME = "app.observability"


def mask_event_dict(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Processor: mask PII by key name and by value pattern, recursively.

    - Keys naming a credential (:func:`~app.observability.pii.classify_key`) get
      ``[redacted]`` whatever the value (``None`` stays ``None``, so absence stays visible).
    - Keys naming a phone number get their value masked to the last 2 digits; everything inside
      a dict or list under such a key is treated as a phone number too.
    - Every other string has any phone number or bearer credential inside it masked; an integer
      that is itself an MSISDN is masked as well (JSON would otherwise print it in full).
    - Values of other types (UUID, datetime, exceptions, models) are rendered with ``str`` and
      masked the same way, because the JSON renderer would print them unmasked.
    """
    return {
        key: value if key in _INTERNAL_KEYS else _mask(value, classify_key(key), 0)
        for key, value in event_dict.items()
    }


def _mask(value: Any, kind: KeyKind | None, depth: int) -> Any:
    if value is None:
        return None
    if kind is KeyKind.CREDENTIAL:
        return REDACTED
    if depth >= _MAX_DEPTH:
        return _TRUNCATED
    if isinstance(value, Mapping):
        return {
            k: _mask(v, KeyKind.PHONE if kind is KeyKind.PHONE else classify_key(k), depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask(item, kind, depth + 1) for item in value]
    if kind is KeyKind.PHONE:
        if isinstance(value, str | int) and not isinstance(value, bool):
            return mask_phone(value)
        return REDACTED
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int):
        return mask_phone(value) if is_msisdn(str(value)) else value
    if isinstance(value, float):
        # 4712345678.0 would print as a phone number followed by ".0".
        integral = value.is_integer() and is_msisdn(str(int(value)))
        return mask_phone(int(value)) if integral else value
    if isinstance(value, bytes | bytearray):
        return mask_text(bytes(value).decode("utf-8", errors="replace"))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return mask_text(str(value))


class _CurrentStdoutHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stdout`` is at emit time (or to a fixed stream when given).

    Resolving the stream per record keeps output correct when stdout is swapped after
    configuration, as pytest's ``capsys`` does for every test.
    """

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return self._fixed if self._fixed is not None else sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        # StreamHandler.__init__ and setStream assign here; the property decides at emit time.
        pass


def _processors(*, from_structlog: bool) -> list[Processor]:
    """The chain before rendering; ``from_structlog`` adds %-formatting of positional args."""
    positional: list[Processor] = (
        [structlog.stdlib.PositionalArgumentsFormatter()] if from_structlog else []
    )
    # Stdlib records (the Vipps client logs with ``extra=``) keep their fields; they pass the
    # masking processor below like everything else.
    extras: list[Processor] = [] if from_structlog else [structlog.stdlib.ExtraAdder()]
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        *positional,
        *extras,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        mask_event_dict,
    ]


def configure_logging(level: str, json_logs: bool, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one masked pipeline to one handler.

    ``level`` is a stdlib level name (``"INFO"``, ``"debug"``); unknown names raise
    :class:`ValueError`. ``json_logs`` selects JSON lines (production) or coloured console lines
    (development). ``stream`` defaults to the current ``sys.stdout`` at each write.

    Safe to call repeatedly. uvicorn's own handlers are removed so its lines go through this
    pipeline; start uvicorn with ``log_config=None`` so it does not install them again.
    """
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")

    renderer: Processor
    if json_logs:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream is None and sys.stdout.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )

    structlog.configure(
        processors=[
            *_processors(from_structlog=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_processors(from_structlog=False),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _CurrentStdoutHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name(_HANDLER_NAME)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
            existing.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    for name in _ROUTED_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
        library_logger.setLevel(logging.NOTSET)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the module's ``__name__``), rendered as ``logger``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def bind_request_id(request_id: str | None = None) -> str:
    """Bind ``request_id`` to every following line in this context; generate one when absent.

    Returns the id so a middleware can echo it in a response header. A caller-supplied id (an
    ``X-Request-Id`` header) is kept as given only when it is short and printable; anything else
    is replaced, since it would be log injection.
    """
    if request_id is None or not _is_safe_id(request_id):
        request_id = uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def bind_checkout_id(checkout_id: str | uuid.UUID) -> None:
    """Bind ``checkout_id`` to every following line in this context."""
    structlog.contextvars.bind_contextvars(checkout_id=str(checkout_id))


def clear_correlation() -> None:
    """Forget every id bound in this context (start of a request or of a worker's next item)."""
    structlog.contextvars.clear_contextvars()


@contextmanager
def bound_correlation(**ids: str | uuid.UUID) -> Iterator[None]:
    """Bind ids for the ``with`` block only, restoring the previous values afterwards.

    ``with bound_correlation(checkout_id=c.id): ...`` is how a worker tags one unit of work.
    """
    with structlog.contextvars.bound_contextvars(**{k: str(v) for k, v in ids.items()}):
        yield


def _is_safe_id(value: str) -> bool:
    return 0 < len(value) <= 128 and all(c.isascii() and c.isprintable() for c in value)
