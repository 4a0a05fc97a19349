"""The HTTP client every Stripe call goes through: `stripe.HTTPClient` on a urllib3 pool.

The SDK's default `requests` session cost as much CPU per call (request preparation,
hooks, cookies, re-reading the environment) as the rest of the SDK; the SDK still does
everything Stripe-specific (authentication, idempotency keys, retries, error objects).
The environment is read once (a proxy, honouring NO_PROXY; never `.netrc`: the API key is
the only credential). No retries or redirects here: retries belong to the SDK (same key)
and the task. A timeout or broken connection may be retried, a certificate problem not.
"""

from __future__ import annotations

import logging
import textwrap
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn
from urllib.parse import urlsplit

import stripe
import urllib3
from urllib3.exceptions import (
    EmptyPoolError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    SSLError,
    TimeoutError,
)

STRIPE_API = "https://api.stripe.com"
# Retrying these is what the SDK does for its `requests` client (timeouts, connection errors);
# and no connection free within the timeout: nothing was sent.
_RETRYABLE = (TimeoutError, NewConnectionError, ProtocolError, ProxyError, EmptyPoolError)
# Connections opened at once as a process starts: a call meanwhile waits for one of them.
_OPENING_THREADS = 32

log = logging.getLogger(__name__)


def environ_proxy(api_base: str) -> str | None:
    """The proxy the environment sets for `api_base` (HTTPS_PROXY / HTTP_PROXY, NO_PROXY)."""
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    if host and urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(parts.scheme or "https")


class Urllib3Client(stripe.HTTPClient):
    name = "urllib3"

    def __init__(self, *, timeout: float, pool_size: int, api_base: str | None = None) -> None:
        super().__init__()
        self._timeout = timeout
        self._api_base = api_base or STRIPE_API
        self._pool_size = pool_size
        options: dict[str, Any] = {
            "num_pools": 2,
            "maxsize": pool_size,
            # Never more connections than the pool keeps: a call waits for a free one
            # (there is one for each thread that calls Stripe) instead of opening its own.
            "block": True,
            "retries": False,
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": stripe.ca_bundle_path,
        }
        proxy = environ_proxy(self._api_base)
        self.proxy = proxy
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        )

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        response = self._send(method, url, headers, post_data, preload=True)
        return response.data, response.status, response.headers

    def request_stream(  # type: ignore[override]
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        response = self._send(method, url, headers, post_data, preload=False)
        return response, response.status, response.headers

    def close(self) -> None:
        self._pool.clear()

    def open_connections(self) -> int:
        """Opens now the connections the pool keeps, so that their count stays the same from
        a process's start to its end instead of rising with each new peak of concurrent calls
        (a connection the server closed stays in the pool, its socket still open, until its
        slot is used again); returns how many are open. Stripe unreachable, the rest open on
        demand, as they always can; through a proxy, always on demand (the tunnel is
        urllib3's to make)."""
        if self.proxy:
            return 0
        pool = self._pool.connection_from_url(self._api_base)
        # urllib3 has no public way to fill a pool: these are the calls its own `urlopen`
        # makes. Every free slot is taken (the pool hands out the one most recently
        # returned), all are connected at once, then all are returned: a call made
        # meanwhile waits about one connection's set-up for a free one.
        held: list[Any] = []
        try:
            while len(held) < self._pool_size:
                held.append(pool._get_conn(timeout=0))
        except EmptyPoolError:
            pass  # calls hold the others
        closed = [conn for conn in held if conn.is_closed]
        try:
            with ThreadPoolExecutor(min(len(closed), _OPENING_THREADS) or 1) as opening:
                failures = [exc for exc in opening.map(_connect, closed) if exc is not None]
        finally:
            for conn in held:
                pool._put_conn(conn)
        opened = sum(not conn.is_closed for conn in held)
        if failures:
            log.info(
                "opened %d of %d Stripe connections at start: %s",
                opened,
                self._pool_size,
                failures[0],
            )
        return opened

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Any,
        *,
        preload: bool,
    ) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool.request(
                method.upper(),
                url,
                body=body,
                headers=dict(headers or {}),
                redirect=False,
                preload_content=preload,
                pool_timeout=self._timeout,
            )
        except HTTPError as err:
            _raise_connection_error(err)


def _connect(conn: Any) -> HTTPError | OSError | None:
    try:
        conn.connect()
    except (HTTPError, OSError) as exc:
        return exc
    return None


def _raise_connection_error(err: HTTPError) -> NoReturn:
    # A certificate error does not heal by trying again, and may be an interception.
    retry = isinstance(err, _RETRYABLE) and not isinstance(err, SSLError)
    if isinstance(err, SSLError):
        msg = (
            "Could not verify Stripe's SSL certificate. Please make sure that your network "
            "is not intercepting certificates."
        )
    else:
        msg = "Unexpected error communicating with Stripe."
    detail = f"{type(err).__name__}: {err}"
    raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
        textwrap.fill(msg) + f"\n\n(Network error: {detail})", should_retry=retry
    ) from err
