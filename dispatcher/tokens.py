"""Runner tokens: shown once at `runner add`, stored only as their SHA-256 hex digest."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    """A fresh runner token (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What Redis keeps of a token, and what a handshake's bearer token is compared against."""
    return hashlib.sha256(token.encode()).hexdigest()
