"""Run ids: time-sortable, URL-safe, short enough to type.

10 characters of milliseconds since the epoch and 8 random ones, both in lowercase Crockford base32, so ids sort
by creation time as strings and two ids made in the same millisecond collide with probability 2**-40.
Stdlib only: the in-run SDK makes child run ids with it.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_run_id(now_s: float | None = None) -> str:
    ms = int((time.time() if now_s is None else now_s) * 1000)
    return _encode(ms, 10) + _encode(secrets.randbits(40), 8)
