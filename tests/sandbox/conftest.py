"""Fixtures: one sandbox server per session, reset before each test, and SDK clients whose
every exchange is checked against Stripe's OpenAPI description."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import stripe

from tests.sandbox.fidelity import SchemaCheckingClient
from worker.sandbox import RunningSandbox, running_sandbox

ClientFactory = Callable[..., stripe.StripeClient]


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> Iterator[RunningSandbox]:
    """A freshly reseeded sandbox; after the test, its books must still balance."""
    sandbox_server.admin.reset()
    yield sandbox_server
    assert sandbox_server.admin.problems() == []


@pytest.fixture
def make_client(sandbox: RunningSandbox) -> Iterator[ClientFactory]:
    """Build real SDK clients against the sandbox; their exchanges must match the spec."""
    http_clients: list[SchemaCheckingClient] = []

    def build(
        *, max_network_retries: int = 0, api_key: str | None = None, check_sent: bool = True
    ) -> stripe.StripeClient:
        http_client = SchemaCheckingClient(check_sent=check_sent)
        http_clients.append(http_client)
        return stripe.StripeClient(
            api_key or sandbox.api_key,
            base_addresses={"api": sandbox.url},
            max_network_retries=max_network_retries,
            http_client=http_client,
        )

    yield build
    problems = [problem for client in http_clients for problem in client.problems]
    assert problems == []


@pytest.fixture
def client(make_client: ClientFactory) -> stripe.StripeClient:
    return make_client()
