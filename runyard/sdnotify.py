"""systemd's notify protocol, for the head and the agent under `Type=notify` units.

    READY=1          once serving (the head: database open and migrated; the agent: first Connect accepted)
    STATUS=...       one line for `systemctl status`
    WATCHDOG=1       every half of WatchdogSec while the daemon's loop is alive; systemd restarts it otherwise
    STOPPING=1       when shutdown begins

The socket comes from NOTIFY_SOCKET (a path, or `@name` in the abstract namespace), the watchdog period from
WATCHDOG_USEC when WATCHDOG_PID is this process (or unset). Both are taken out of the environment when read, so
nothing the daemon starts (runs, snapshot checks) inherits them. Without NOTIFY_SOCKET every call does nothing.
Must not: raise because systemd is gone or the socket is full (a notification is best effort), or block.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, MutableMapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager that started this process, if any."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        address = environ.pop("NOTIFY_SOCKET", "")
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = 0.0
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    async def keep_alive(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping the watchdog every half period while `healthy()` says so; a loop that hangs stops the pings and
        systemd restarts the daemon. Returns at once when there is no watchdog."""
        if not self.enabled or not self.watchdog_s:
            return
        while True:
            if healthy():
                self.watchdog()
            await asyncio.sleep(self.watchdog_s / 2)

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager", extra={"socket": self._address, "error": str(err)})
