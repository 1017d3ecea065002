"""JSON lines with stable fields, PII masked everywhere, correlation ids carried along."""

import asyncio
import io
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from app.observability.logging import (
    bind_checkout_id,
    bind_request_id,
    bound_correlation,
    clear_correlation,
    configure_logging,
    get_logger,
)
from app.observability.pii import find_pii

PHONE = "4712345678"
DANISH_PHONE = "+4512345678"
CUSTOMER_TOKEN = "cGhvbmUtZXhjaGFuZ2UtdG9rZW4tMDEyMzQ1Njc4OQ"
ACCESS_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl"
CLIENT_SECRET = "client-secret-value-42"
SECRETS = (CUSTOMER_TOKEN, ACCESS_TOKEN, CLIENT_SECRET)


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    clear_correlation()
    yield
    clear_correlation()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


class CapturedJson:
    """Log output written by the JSON pipeline to a private stream."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def raw(self) -> str:
        return self.stream.getvalue()

    def __call__(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw.splitlines()]


@pytest.fixture
def json_output() -> CapturedJson:
    captured = CapturedJson()
    configure_logging("INFO", json_logs=True, stream=captured.stream)
    return captured


def test_every_line_is_one_json_object_with_the_stable_fields(json_output):
    log = get_logger("app.checkout.service")
    log.info("checkout.transition", to="awaiting_scan")
    log.warning("vipps.webhook.duplicate", event_id="e-1")

    first, second = json_output()
    assert first["event"] == "checkout.transition"
    assert first["level"] == "info"
    assert first["logger"] == "app.checkout.service"
    assert first["to"] == "awaiting_scan"
    assert second["event"] == "vipps.webhook.duplicate"
    assert second["level"] == "warning"
    timestamp = datetime.fromisoformat(first["timestamp"])
    assert timestamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - timestamp).total_seconds()) < 60


def test_pii_is_masked_by_key_and_by_value_recursively(json_output):
    get_logger("app.loyalty").info(
        "loyalty.phone_exchange",
        phone=PHONE,
        msisdn=int(PHONE),
        phone_number=DANISH_PHONE,
        customer_token=CUSTOMER_TOKEN,
        customerToken=CUSTOMER_TOKEN,
        token=ACCESS_TOKEN,
        access_token=ACCESS_TOKEN,
        secret=CLIENT_SECRET,
        client_secret=CLIENT_SECRET,
        authorization=f"Bearer {ACCESS_TOKEN}",
        api_key=CLIENT_SECRET,
        password=CLIENT_SECRET,
        note=f"customer {PHONE} scanned",
        amount_as_int=int(PHONE),
        nested={
            "customer": {"phoneNumber": PHONE, "tokens": [CUSTOMER_TOKEN]},
            "attempts": [{"msisdn": PHONE}, f"retry for {DANISH_PHONE}", (PHONE, 3)],
            "headers": {"Authorization": f"Bearer {ACCESS_TOKEN}"},
        },
        reference="s123-pos2-0042",
        created_ms=1732712345678,
    )
    (line,) = json_output()

    assert find_pii(json_output.raw, known_secrets=SECRETS) == []
    assert line["phone"] == "********78"
    assert line["msisdn"] == "********78"
    assert line["phone_number"] == "********78"
    for key in (
        "customer_token",
        "customerToken",
        "token",
        "access_token",
        "secret",
        "client_secret",
        "authorization",
        "api_key",
        "password",
    ):
        assert line[key] == "[redacted]", key
    assert line["note"] == "customer ********78 scanned"
    assert line["amount_as_int"] == "********78"
    assert line["nested"] == {
        "customer": {"phoneNumber": "********78", "tokens": "[redacted]"},
        "attempts": [{"msisdn": "********78"}, "retry for ********78", ["********78", 3]],
        "headers": {"Authorization": "[redacted]"},
    }
    assert line["reference"] == "s123-pos2-0042"
    assert line["created_ms"] == 1732712345678


def test_absent_values_stay_visible(json_output):
    get_logger("app.loyalty").info("loyalty.lookup", phone=None, customer_token=None)
    (line,) = json_output()
    assert line["phone"] is None
    assert line["customer_token"] is None


def test_other_objects_are_rendered_as_text_and_masked(json_output):
    class Customer:
        def __str__(self) -> str:
            return f"Customer(phone={PHONE})"

    checkout_id = uuid.UUID("00000000-0000-4000-8000-000000000001")
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    get_logger("app").info(
        "x.y", customer=Customer(), checkout=checkout_id, at=at, raw=b"4712345678"
    )
    (line,) = json_output()
    assert line["customer"] == "Customer(phone=********78)"
    assert line["checkout"] == str(checkout_id)
    assert line["at"] == "2025-01-02T03:04:05+00:00"
    assert line["raw"] == "********78"


def test_exception_tracebacks_are_masked(json_output):
    log = get_logger("app.vipps.client")
    try:
        raise RuntimeError(f"lookup failed for {PHONE} with Bearer {ACCESS_TOKEN}")
    except RuntimeError:
        log.exception("vipps.call.failed")
    (line,) = json_output()
    assert line["event"] == "vipps.call.failed"
    assert line["level"] == "error"
    assert "RuntimeError: lookup failed for ********78 with Bearer [redacted]" in line["exception"]
    assert find_pii(json_output.raw, known_secrets=SECRETS) == []


def test_stdlib_loggers_are_rendered_as_json_through_the_same_pipeline(json_output):
    bind_request_id("req-1")
    logging.getLogger("uvicorn.access").info('%s - "GET /tills HTTP/1.1" %d', "10.0.0.1", 200)
    logging.getLogger("sqlalchemy.engine").warning("params: %s", {"msisdn": PHONE})
    logging.getLogger("httpx").warning("HTTP Request: GET https://x/?phone=%s", DANISH_PHONE)
    try:
        raise ValueError(PHONE)
    except ValueError:
        logging.getLogger("app.workers").exception("outbox.dispatch.failed")

    access, sql, http, failure = json_output()
    assert access["event"] == '10.0.0.1 - "GET /tills HTTP/1.1" 200'
    assert access["logger"] == "uvicorn.access"
    assert access["level"] == "info"
    assert access["request_id"] == "req-1"
    assert "timestamp" in access
    assert sql["event"] == "params: {'msisdn': '********78'}"
    assert http["event"] == "HTTP Request: GET https://x/?phone=********78"
    assert failure["event"] == "outbox.dispatch.failed"
    assert failure["exception"].endswith("ValueError: ********78")
    assert find_pii(json_output.raw, known_secrets=SECRETS) == []


def test_uvicorn_handlers_are_removed_so_its_lines_are_json_too():
    stray = logging.StreamHandler(io.StringIO())
    uvicorn_logger = logging.getLogger("uvicorn.error")
    uvicorn_logger.addHandler(stray)
    uvicorn_logger.propagate = False
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    uvicorn_logger.info("Started server process [%d]", 1)
    assert stray not in uvicorn_logger.handlers
    assert json.loads(stream.getvalue())["event"] == "Started server process [1]"


def test_configure_is_idempotent_and_the_latest_call_wins():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", json_logs=True, stream=first)
    configure_logging("INFO", json_logs=True, stream=first)
    configure_logging("WARNING", json_logs=True, stream=second)
    log = get_logger("app")
    log.info("below.level")
    log.warning("above.level")
    assert first.getvalue() == ""
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == ["above.level"]


def test_loggers_created_before_configure_follow_the_new_configuration():
    log = get_logger("app.early")
    configure_logging("INFO", json_logs=False, stream=io.StringIO())
    log.info("first")
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    log.info("second")
    assert json.loads(stream.getvalue())["event"] == "second"


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", json_logs=True)


def test_console_rendering_is_readable_and_masked():
    stream = io.StringIO()
    configure_logging("DEBUG", json_logs=False, stream=stream)
    get_logger("app.checkout").debug(
        "checkout.transition", phone=PHONE, customer_token=CUSTOMER_TOKEN, to="paid"
    )
    output = stream.getvalue()
    assert "checkout.transition" in output
    assert "phone=********78" in output
    assert "to=paid" in output
    assert not output.lstrip().startswith("{")
    assert find_pii(output, known_secrets=SECRETS) == []


def test_default_stream_is_the_current_stdout(capsys):
    configure_logging("INFO", json_logs=True)
    get_logger("app").info("written.to.stdout", phone=PHONE)
    out = capsys.readouterr().out
    assert json.loads(out)["event"] == "written.to.stdout"
    assert find_pii(out) == []


def test_caplog_still_captures_and_sees_masked_values(caplog):
    configure_logging("INFO", json_logs=True, stream=io.StringIO())
    with caplog.at_level(logging.INFO):
        get_logger("app.loyalty").info("loyalty.enrolled", phone=PHONE)
    (record,) = [r for r in caplog.records if r.name == "app.loyalty"]
    assert record.msg["event"] == "loyalty.enrolled"
    assert record.msg["phone"] == "********78"
    assert PHONE not in caplog.text


def test_request_and_checkout_ids_are_carried_on_every_line(json_output):
    log = get_logger("app.api")
    request_id = bind_request_id()
    log.info("request.started")
    bind_checkout_id(uuid.UUID("00000000-0000-4000-8000-000000000002"))
    log.info("checkout.transition")
    logging.getLogger("sqlalchemy.engine").warning("COMMIT")
    clear_correlation()
    log.info("request.finished")

    started, transition, commit, finished = json_output()
    assert len(request_id) == 32
    assert started["request_id"] == request_id
    assert "checkout_id" not in started
    assert transition["request_id"] == request_id
    assert transition["checkout_id"] == "00000000-0000-4000-8000-000000000002"
    assert commit["checkout_id"] == transition["checkout_id"]
    assert "request_id" not in finished
    assert "checkout_id" not in finished


def test_supplied_request_id_is_kept_when_safe_and_replaced_otherwise():
    assert bind_request_id("abc-123") == "abc-123"
    replaced = bind_request_id("evil\nforged line")
    assert replaced != "evil\nforged line"
    assert len(replaced) == 32
    assert len(bind_request_id("x" * 500)) == 32


def test_bound_correlation_restores_the_outer_ids(json_output):
    log = get_logger("app.workers.reconciler")
    bind_request_id("outer")
    with bound_correlation(checkout_id="c-1"):
        log.info("reconciler.repair")
    log.info("reconciler.tick")
    repair, tick = json_output()
    assert repair["checkout_id"] == "c-1"
    assert repair["request_id"] == "outer"
    assert "checkout_id" not in tick


async def test_concurrent_tasks_keep_their_own_checkout_ids(json_output):
    log = get_logger("app.checkout.service")

    async def handle(checkout_id: str) -> None:
        bind_checkout_id(checkout_id)
        await asyncio.sleep(0)
        log.info("checkout.transition", handled=checkout_id)

    await asyncio.gather(*(handle(f"c-{i}") for i in range(20)))
    lines = json_output()
    assert len(lines) == 20
    assert all(line["checkout_id"] == line["handled"] for line in lines)
