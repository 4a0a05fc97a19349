"""The Stripe SDK's HTTP client: bytes over a real local socket, errors sorted the way the
SDK's own clients sort them, the proxy read from the environment once."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from worker.adapters.stripe_http import Urllib3Client, environ_proxy


class _Stripe(BaseHTTPRequestHandler):
    """Answers a charge; the first `drop` requests get their connection closed unanswered.
    Keeps connections open between requests (HTTP/1.1), as Stripe does."""

    protocol_version = "HTTP/1.1"

    seen: list[dict[str, Any]]
    connections: list[tuple[str, int]]
    drop: int
    delay: float

    def setup(self) -> None:
        type(self).connections.append(self.client_address)
        super().setup()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        self.seen.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        if len(self.seen) <= type(self).drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if type(self).delay:
            threading.Event().wait(type(self).delay)
        payload = json.dumps({"id": "ch_1", "object": "charge", "amount": 500}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Idempotent-Replayed", "true")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def a_server(
    *, drop: int = 0, delay: float = 0.0
) -> Iterator[tuple[str, list[dict[str, Any]], list[tuple[str, int]]]]:
    """The server's address, the requests it got and the connections it accepted."""
    seen: list[dict[str, Any]] = []
    connections: list[tuple[str, int]] = []
    attributes = {"seen": seen, "connections": connections, "drop": drop, "delay": delay}
    handler = type("Handler", (_Stripe,), attributes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, connections
    finally:
        server.shutdown()
        server.server_close()


def _charges_at_once(client: Urllib3Client, base: str, count: int) -> None:
    calls = [
        threading.Thread(target=client.request, args=("post", f"{base}/v1/charges", {}, ""))
        for _ in range(count)
    ]
    for call in calls:
        call.start()
    for call in calls:
        call.join()


def _wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """The server accepts in its own thread: what a client opened is seen a moment later."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_answer_comes_back_as_body_status_and_case_insensitive_headers() -> None:
    # Given a server answering a charge
    with a_server() as (base, seen, _connections):
        client = Urllib3Client(timeout=5, pool_size=2, api_base=base)
        # When a form-encoded POST is sent
        body, status, headers = client.request(
            "post", f"{base}/v1/charges", {"Idempotency-Key": "k1"}, "amount=500"
        )
    # Then the server got it as sent, and the answer comes back whole
    assert seen[0]["path"] == "/v1/charges"
    assert seen[0]["body"] == "amount=500"
    assert seen[0]["headers"]["Idempotency-Key"] == "k1"
    assert (status, json.loads(body)["id"]) == (200, "ch_1")
    assert headers.get("idempotent-replayed") == "true"


def _charge_failing(base: str, *, timeout: float = 2.0) -> stripe.APIConnectionError:
    client = Urllib3Client(timeout=timeout, pool_size=1, api_base=base)
    with pytest.raises(stripe.APIConnectionError) as raised:
        client.request("post", f"{base}/v1/charges", {}, "")
    return raised.value


def test_a_refused_connection_may_be_retried() -> None:
    # Given nothing listening
    # When a request is sent, Then it is a connection error the SDK may retry
    error = _charge_failing(f"http://127.0.0.1:{_free_port()}")
    assert error.should_retry is True


def test_no_answer_within_the_timeout_may_be_retried() -> None:
    # Given a server slower than the timeout
    with a_server(delay=2.0) as (base, _seen, _connections):
        # When a request is sent, Then it times out as a retryable connection error
        error = _charge_failing(base, timeout=0.3)
    assert error.should_retry is True
    assert "ReadTimeoutError" in str(error)


def test_a_tls_failure_is_not_retried() -> None:
    # Given a plain-HTTP server addressed over HTTPS (the handshake fails)
    with a_server() as (base, _seen, _connections):
        # When a request is sent, Then the error is final
        error = _charge_failing(base.replace("http://", "https://"))
    assert error.should_retry is False
    assert "SSL certificate" in str(error)


def test_the_sdk_repeats_a_dropped_charge_with_the_same_idempotency_key() -> None:
    # Given a server that drops the first request unanswered, and the SDK allowed one retry
    with a_server(drop=1) as (base, seen, _connections):
        client = stripe.StripeClient(
            "sk_test_http",
            base_addresses={"api": base},
            max_network_retries=1,
            http_client=Urllib3Client(timeout=5, pool_size=2, api_base=base),
        )
        # When a charge is created through the SDK
        response = client.raw_request(
            "post", "/v1/charges", amount=500, currency="usd", idempotency_key="debit-k"
        )
    # Then the second try answered it, under the same key
    assert response.data["id"] == "ch_1"
    assert [r["headers"]["Idempotency-Key"] for r in seen] == ["debit-k", "debit-k"]


def test_opening_the_pool_connects_every_connection_it_keeps_and_sends_nothing() -> None:
    # Given a server, and a client keeping three connections
    with a_server(delay=0.2) as (base, seen, connections):
        client = Urllib3Client(timeout=5, pool_size=3, api_base=base)
        # When the pool is opened
        opened = client.open_connections()
        # Then three connections are open, with no request sent on them
        _wait_until(lambda: len(connections) >= 3)
        assert (opened, len(connections), seen) == (3, 3, [])
        # And three calls at once use those three, opening none of their own
        _charges_at_once(client, base, 3)
    assert (len(seen), len(connections)) == (3, 3)


def test_calls_beyond_the_pool_wait_for_a_free_connection_instead_of_opening_more() -> None:
    # Given a client keeping two connections, and a server that takes 0.2 s to answer
    with a_server(delay=0.2) as (base, seen, connections):
        client = Urllib3Client(timeout=5, pool_size=2, api_base=base)
        # When four calls are made at once
        _charges_at_once(client, base, 4)
    # Then all four were answered over the pool's two connections
    assert (len(seen), len(connections)) == (4, 2)


def test_no_free_connection_within_the_timeout_may_be_retried_and_nothing_was_sent() -> None:
    # Given a client keeping one connection, held by a streamed answer not yet read
    with a_server() as (base, seen, _connections):
        client = Urllib3Client(timeout=0.3, pool_size=1, api_base=base)
        client.request_stream("post", f"{base}/v1/charges", {}, "")
        # When another call is made
        with pytest.raises(stripe.APIConnectionError) as raised:
            client.request("post", f"{base}/v1/charges", {}, "")
    # Then it fails as a connection error the SDK may retry, and the server saw only the first
    assert raised.value.should_retry is True
    assert "EmptyPoolError" in str(raised.value)
    assert len(seen) == 1


def test_with_stripe_unreachable_opening_the_pool_says_how_many_opened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given nothing listening at the API base
    client = Urllib3Client(timeout=1, pool_size=4, api_base=f"http://127.0.0.1:{_free_port()}")
    # When the pool is opened
    with caplog.at_level(logging.INFO, logger="worker.adapters.stripe_http"):
        opened = client.open_connections()
    # Then none opened, the log says so and why, and nothing was raised
    assert opened == 0
    assert "opened 0 of 4 Stripe connections at start: " in caplog.text
    assert "Connection refused" in caplog.text


def test_through_a_proxy_the_pool_opens_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a proxy set for Stripe (one that would refuse a connection)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = Urllib3Client(timeout=1, pool_size=2)
    # When the pool is opened, Then no connection is tried
    assert client.open_connections() == 0


def test_the_proxy_comes_from_the_environment_for_the_api_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an HTTPS proxy in the environment
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # When the client is built for Stripe, Then it goes through that proxy
    assert environ_proxy("https://api.stripe.com") == "http://proxy.internal:3128"
    assert Urllib3Client(timeout=1, pool_size=1).proxy == "http://proxy.internal:3128"


def test_no_proxy_exempts_the_api_base(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a proxy that the environment's NO_PROXY exempts the sandbox host from
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # When the client is built for that host, Then it connects directly
    assert environ_proxy("https://127.0.0.1:12111") is None
