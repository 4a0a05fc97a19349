"""DEBIT_WORKER_LOG_FORMAT=json: one JSON object per line, with the request's fields from the
call (`extra=`) or from the enclosing `log_context`; text stays the default."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pytest

from worker.ops.observability import configure_logging, log_context
from worker.settings import Settings, SettingsError, load_settings

KEY = "sk_test_51JsonLogsKeyValue"


@contextmanager
def preserved_root_logging() -> Iterator[None]:
    """Puts back what configure_logging changes: the root logger's level, its handlers'
    filters and formatters (pytest's own handlers among them), the `stripe` logger's level."""
    root = logging.getLogger()
    stripe = logging.getLogger("stripe")
    levels = (root.level, stripe.level)
    handlers = {h: (list(h.filters), h.formatter) for h in root.handlers}
    try:
        yield
    finally:
        logging.captureWarnings(False)  # as pytest runs the tests
        root.setLevel(levels[0])
        stripe.setLevel(levels[1])
        for handler, (filters, formatter) in handlers.items():
            handler.filters[:] = filters
            handler.setFormatter(formatter)


@contextmanager
def root_output(text_format: str = "%(message)s") -> Iterator[io.StringIO]:
    """What a handler on the root logger (in `text_format` until configure_logging sets
    another) writes."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter(text_format))
    root = logging.getLogger()
    with preserved_root_logging():
        root.addHandler(handler)
        try:
            yield output
        finally:
            root.removeHandler(handler)


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    with root_output() as output:
        yield output


def json_settings(**overrides: Any) -> Settings:
    return load_settings(stripe_api_key=KEY, log_format="json", **overrides)


def lines(output: io.StringIO) -> list[dict[str, Any]]:
    """Each line written, parsed: every one must be a JSON object of its own."""
    parsed = [json.loads(line) for line in output.getvalue().splitlines()]
    assert all(isinstance(each, dict) for each in parsed)
    return parsed


log = logging.getLogger("worker.test_json_logs")


def fail(error: Exception) -> NoReturn:
    raise error


def test_text_is_the_default_format() -> None:
    assert load_settings().log_format == "text"


def test_an_unknown_log_format_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match="DEBIT_WORKER_LOG_FORMAT"):
        load_settings(log_format="xml")


def test_a_json_line_has_time_level_logger_and_message(written: io.StringIO) -> None:
    # Given JSON logs
    configure_logging(json_settings())
    before = datetime.now(UTC)
    # When a line is logged
    log.warning("broker unreachable (%s); trying again in %d s", "refused", 5)
    # Then it is one JSON object, its time in ISO 8601 UTC
    [line] = lines(written)
    assert line == {
        "time": line["time"],
        "level": "WARNING",
        "logger": "worker.test_json_logs",
        "message": "broker unreachable (refused); trying again in 5 s",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    at = datetime.fromisoformat(line["time"])
    assert at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= at <= datetime.now(UTC)


def test_a_message_over_several_lines_is_still_one_json_line(written: io.StringIO) -> None:
    configure_logging(json_settings())
    log.info("first\nsecond\r\nthird\u2028fourth")
    [line] = lines(written)
    assert line["message"] == "first\nsecond\r\nthird\u2028fourth"


def test_the_fields_of_the_enclosing_log_context_are_on_every_line(
    written: io.StringIO,
) -> None:
    # Given JSON logs and the handling of one request
    configure_logging(json_settings())
    with log_context(request_id="req-1", producer="billing", attempt=2):
        # When lines are logged inside it, one inner block adding the outcome
        log.info("request req-1: Stripe attempt 1")
        with log_context(outcome="failed", code="insufficient_balance"):
            log.info("request req-1 refused")
        log.info("after the inner block")
    log.info("outside any request")
    # Then each carries the fields known where it was logged, and only those
    first, refused, after, outside = lines(written)
    request = {"request_id": "req-1", "producer": "billing", "attempt": 2}
    assert {k: first[k] for k in request} == request
    assert refused["outcome"] == "failed"
    assert refused["code"] == "insufficient_balance"
    assert {k: refused[k] for k in request} == request
    assert "outcome" not in after
    assert after["request_id"] == "req-1"
    assert set(outside) == {"time", "level", "logger", "message"}


def test_fields_given_with_the_call_win_over_the_context(written: io.StringIO) -> None:
    configure_logging(json_settings())
    # Given a context naming one attempt / When a call names the outcome and another attempt
    with log_context(request_id="req-2", attempt=1):
        log.info("done", extra={"attempt": 3, "outcome": "succeeded"})
    # Then the call's fields are written, next to the context's
    [line] = lines(written)
    assert (line["request_id"], line["attempt"], line["outcome"]) == ("req-2", 3, "succeeded")


def test_a_field_that_is_not_known_is_left_out_not_written_as_null(
    written: io.StringIO,
) -> None:
    configure_logging(json_settings())
    with log_context(request_id="req-3", producer=None):
        log.info("command without a producer")
    [line] = lines(written)
    assert line["request_id"] == "req-3"
    assert "producer" not in line


def test_log_context_refuses_a_field_it_does_not_write() -> None:
    with pytest.raises(TypeError, match="request"), log_context(request="req-4"):
        pass


def test_another_threads_lines_do_not_carry_this_requests_fields(
    written: io.StringIO,
) -> None:
    # Given JSON logs, and a thread handling a request
    configure_logging(json_settings())
    inside, done = threading.Event(), threading.Event()

    def handle() -> None:
        with log_context(request_id="req-5"):
            inside.set()
            done.wait(5)

    thread = threading.Thread(target=handle)
    thread.start()
    assert inside.wait(5)
    # When another thread logs meanwhile
    log.info("unrelated")
    done.set()
    thread.join()
    # Then its line carries no request id
    [line] = lines(written)
    assert "request_id" not in line


def test_a_logged_exception_is_the_exc_field_of_its_one_line(written: io.StringIO) -> None:
    configure_logging(json_settings())
    # When an exception is logged with its traceback
    try:
        fail(RuntimeError("the ledger went away"))
    except RuntimeError:
        with log_context(request_id="req-6", attempt=1):
            log.exception("attempt 1 of req-6 failed unexpectedly")
    # Then the traceback is a field of the same line
    [line] = lines(written)
    assert line["level"] == "ERROR"
    assert line["message"] == "attempt 1 of req-6 failed unexpectedly"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].endswith("RuntimeError: the ledger went away")
    assert line["request_id"] == "req-6"


def test_json_logs_configured_again_as_text_write_the_text_format(
    written: io.StringIO,
) -> None:
    # Given logging configured as JSON, then again with the default format
    configure_logging(json_settings())
    configure_logging(load_settings(stripe_api_key=KEY))
    # When a line is logged inside a request's context
    with log_context(request_id="req-7"):
        log.info("request req-7: Stripe attempt 1")
    # Then it is today's text line: time LEVEL logger: message
    text = written.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO worker.test_json_logs: "
        r"request req-7: Stripe attempt 1\n",
        text,
    )


def test_configure_logging_sets_the_root_level_each_time(written: io.StringIO) -> None:
    # Given logging configured at WARNING, then at DEBUG
    configure_logging(json_settings(log_level="WARNING"))
    log.info("not written")
    configure_logging(json_settings(log_level="DEBUG"))
    # When a DEBUG line is logged / Then it is written, and the INFO one before was not
    log.debug("written")
    assert [line["message"] for line in lines(written)] == ["written"]


def test_python_warnings_are_json_lines_too(written: io.StringIO) -> None:
    # Given JSON logs
    configure_logging(json_settings())
    # When a library warns (Celery does at start when run as root), as Python prints it
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("running as root is not recommended", UserWarning, stacklevel=1)
    # Then it is a JSON line of the py.warnings logger, not a bare multi-line text
    [line] = lines(written)
    assert line["logger"] == "py.warnings"
    assert line["level"] == "WARNING"
    assert "UserWarning: running as root is not recommended" in line["message"]
