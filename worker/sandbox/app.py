"""Build the aiohttp application: the Stripe routes behind their front door, and admin."""

from __future__ import annotations

from aiohttp import web

from worker.sandbox import admin, api, api_lists
from worker.sandbox.core import Sandbox


def build_app(sandbox: Sandbox) -> web.Application:
    app = web.Application(middlewares=[api.stripe_front], client_max_size=1024**2)
    app[api.SANDBOX] = sandbox
    api.add_routes(app)
    api_lists.add_routes(app)
    admin.add_routes(app)
    return app
