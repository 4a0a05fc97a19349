"""The HTTP session every Stripe call goes through.

`requests` re-reads the proxy variables, `.netrc` and the CA settings from the environment
on every request when `trust_env` is on; at a hundred calls a second that was a measurable
share of the worker's CPU. The environment is read once here instead (proxies for the
configured API base, honouring NO_PROXY), and never a `.netrc`: Stripe's credential is the
API key alone. One connection pool, sized to the worker's threads, keeps TLS connections
to Stripe open for reuse instead of discarding all but ten of them.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies

STRIPE_API = "https://api.stripe.com"


def stripe_session(api_base: str | None, pool_size: int) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies.update(get_environ_proxies(api_base or STRIPE_API))
    # Retries belong to the Stripe SDK (same idempotency key) and to the task, never here.
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
