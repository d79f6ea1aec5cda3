"""The monitoring endpoint both daemons serve: `/metrics` (Prometheus' text format, from the daemon's own registry),
`/healthz` (the process is alive and its event loop answers) and `/readyz` (the daemon says it is ready).

Plain HTTP by default, meant for loopback; a non-loopback address belongs behind the network's own protection
(or give it a TLS context). The daemon decides what ready means (`Readiness`) and what to read before a scrape
(`refresh`); this module only serves.
Must not: know either daemon's parts (the head and the agent each build their registry and readiness), nor use
prometheus-client's global registry (several daemons share one process in tests).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from runyard.config import is_loopback
from runyard.errors import UsageError

log = logging.getLogger(__name__)

REFRESH_TIMEOUT_S = 5.0     # a scrape waits this long for the daemon's state; then it serves what it has

Readiness = Callable[[], str]           # "" when ready, else why not (one line, answered with 503)
Refresh = Callable[[], Awaitable[None]]


def disabled(address: str) -> bool:
    """`""` or `"off"`: no monitoring endpoint."""
    return address.strip().lower() in ("", "off")


async def _nothing() -> None:
    return None


async def start_site(runner: web.AppRunner, address: str, context: ssl.SSLContext | None, setting: str) -> str:
    """Serve `runner`'s application on `address` (host:port, port 0 for a free one); returns the base URL clients
    use (`http(s)://host:port`). ValueError, naming the `setting`, for an address that is not host:port; OSError
    when it cannot be bound (the runner is cleaned up)."""
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{setting} must be host:port, not {address!r}") from None
    if not host or not 0 <= number < 65536:
        raise ValueError(f"{setting} must be host:port, not {address!r}")
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), number, ssl_context=context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return f"{'https' if context else 'http'}://{shown}:{bound}"


class MonitoringServer:
    """`/metrics`, `/healthz` and `/readyz` on one listening socket, started and stopped by its daemon."""

    def __init__(self, registry: CollectorRegistry, *, readiness: Readiness,
                 refresh: Refresh = _nothing) -> None:
        self._registry = registry
        self._readiness = readiness
        self._refresh = refresh
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        self.url = ""

    async def start(self, address: str, context: ssl.SSLContext | None = None) -> str:
        """Listen on `address` (host:port, port 0 for a free one); returns the URL of `/metrics`.
        Raises ValueError for an address that is not host:port, OSError when it cannot be bound."""
        self.url = await start_site(self._runner, address, context, "metrics_listen") + "/metrics"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await self._refresh()
        except TimeoutError:
            log.warning("metrics: reading the daemon's state timed out; serving the last figures")
        except Exception:
            log.exception("metrics: reading the daemon's state failed; serving the last figures")
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")     # answered from the event loop: it is not stuck

    async def _readyz(self, request: web.Request) -> web.Response:
        why = self._readiness()
        if why:
            return web.Response(status=503, text=f"not ready: {why}\n")
        return web.Response(text="ready\n")


async def serve_metrics(registry: CollectorRegistry, address: str, *, readiness: Readiness,
                        refresh: Refresh = _nothing) -> MonitoringServer | None:
    """Serve a daemon's `/metrics`, `/healthz` and `/readyz` on `address` and log the URL; None when `address` is
    "" or "off". UsageError for an address that is not host:port or cannot be bound."""
    if disabled(address):
        log.info("metrics endpoint off")
        return None
    server = MonitoringServer(registry, readiness=readiness, refresh=refresh)
    try:
        url = await server.start(address)
    except ValueError as err:
        raise UsageError(f"config: {err}") from None
    except OSError as err:
        raise UsageError(f"cannot serve metrics on metrics_listen {address}: {err.strerror or err}") from None
    if not is_loopback(address):
        log.warning("metrics endpoint is plain HTTP on a non-loopback address; keep it behind the network's "
                    "protection", extra={"metrics_url": url})
    log.info("metrics endpoint listening", extra={"metrics_url": url})
    return server
