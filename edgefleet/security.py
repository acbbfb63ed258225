"""Bearer tokens as the platform keeps them: hashes only. Pure, stdlib only.

The config, the Gateway's arguments (which Serve stores and may log), and the process memory of
every replica hold ``sha256:<hex>`` digests, never a token, so neither a leaked config nor a log
line gives a caller's credential away. Tokens are long random strings (``new_token``), so a plain
SHA-256 is enough; a slow password hash would only slow down every request.

Example:
    >>> digest = hash_token("s3cret-token-of-32-or-more-chars")
    >>> digest.startswith("sha256:") and is_token_hash(digest)
    True
"""

from __future__ import annotations

import hashlib
import re
import secrets

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
MIN_TOKEN_CHARS = 16  # a short token would make the unsalted hash guessable


def digest(token: str) -> str:
    """``sha256:<hex>`` of ``token``: what ``auth.tokens`` stores, and the Gateway's key for a caller."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def hash_token(token: str) -> str:
    """:func:`digest` of a new token, refusing one too short to be safe unsalted."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"a bearer token needs at least {MIN_TOKEN_CHARS} characters (use edgefleet auth new)")
    return digest(token)


def is_token_hash(value: str) -> bool:
    return bool(_HASH.match(value))


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return secrets.token_urlsafe(32)


def matches(token: str | None, hashes: frozenset[str]) -> bool:
    """Whether ``token`` is one of the accepted ones. Comparing digests of the caller's own input leaks
    nothing about a stored token, so a set lookup is safe here (no timing attack on the preimage)."""
    return token is not None and digest(token) in hashes
