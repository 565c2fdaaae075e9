"""Runner tokens: shown once at `runner add`, stored only as their SHA-256 hex digest."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable


def new_token(draw: Callable[[int], str] = secrets.token_urlsafe) -> str:
    """A fresh runner token (256 random bits, URL-safe text) that does not begin with ``-``:
    a command line reads ``--token -x…`` as a missing value followed by an option (argparse
    refuses it), so one token in 64 would otherwise only work as ``--token=…`` or from the
    environment. Drawing again costs less than 0.03 bits of the 256."""
    while True:
        token = draw(32)
        if not token.startswith("-"):
            return token


def token_hash(token: str) -> str:
    """What Redis keeps of a token, and what a handshake's bearer token is compared against."""
    return hashlib.sha256(token.encode()).hexdigest()
