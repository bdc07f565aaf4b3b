"""The studio's web app: the page, its static files, the login form, and each view's API.

Each view is one module with `routes(studio) -> list[web.RouteDef]` under `/api/<view>/`, and
one script and style sheet under `static/`. They share the `Studio`: the config the gateway
runs with, so they read the same policy files, audit trail and backends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.observability.logging import configure_logging
from gateway.studio import audit_view, backends_view, cases_view, playground
from gateway.studio.access import SESSION_COOKIE, Access, middleware
from gateway.studio.context import STUDIO_KEY, Studio

STATIC = Path(__file__).parent / "static"


View = Callable[[Studio], list[web.RouteDef]]
# each view module's `routes`, in the order of the page's tabs
VIEWS: tuple[View, ...] = (
    playground.routes,
    cases_view.routes,
    audit_view.routes,
    backends_view.routes,
)
# What a view must set up on the app before it starts (app keys, cleanup_ctx): its `setup`.
Setup = Callable[[web.Application], None]
SETUPS: tuple[Setup, ...] = (backends_view.setup,)


def build_studio_app(studio: Studio, access: Access) -> web.Application:
    app = web.Application(middlewares=[middleware(access)], client_max_size=4 * 1024 * 1024)
    app[STUDIO_KEY] = studio
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/login", _page("login.html"))
    app.router.add_post("/login", _login(access))
    app.router.add_static("/static", STATIC, show_index=False, follow_symlinks=False)
    for view in VIEWS:
        app.router.add_routes(view(studio))
    for setup in SETUPS:
        setup(app)
    app.on_cleanup.append(_closed)
    return app


async def _closed(app: web.Application) -> None:
    await app[STUDIO_KEY].close()


def _page(name: str) -> Handler:
    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers={"Content-Type": "text/html"})

    return page


def _login(access: Access) -> Handler:
    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = form.get("token")
        if access.token is None:
            raise web.HTTPFound("/")
        if not isinstance(token, str) or not access.token_matches(token):
            raise web.HTTPFound("/login?failed=1")
        response = web.HTTPFound("/")
        response.set_cookie(SESSION_COOKIE, access.session(), httponly=True,
                            samesite="Strict", path="/")
        raise response

    return login


def run_studio(studio: Studio, host: str, port: int, token: str | None) -> None:
    access = Access.for_bind(host, token)
    logging = studio.settings.logging  # the gateway's redacting logger, as `veil serve` has it
    key_env = logging.correlation_key_env
    configure_logging(logging.level, logging.format,
                      correlation_key=os.environ[key_env].encode() if key_env else None)
    print(f"veil studio: http://{host}:{port}/", flush=True)
    web.run_app(build_studio_app(studio, access), host=host, port=port, print=None)
