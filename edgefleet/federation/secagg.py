"""Secure aggregation: the coordinator learns the sum of the clients' updates and nothing else.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017),
the semi-honest variant. Pure Python + numpy + ``cryptography``; no Ray.

Per round and client ``u`` (clients ordered by id; Shamir x-coordinate = position + 1):

1. **Advertise.** Two fresh X25519 key pairs, ``c`` (encrypts shares) and ``s`` (seeds masks), and
   a random self-mask seed ``b_u`` whose SHA-256 commitment is published with the public keys.
2. **Share.** ``s_u``'s private key and ``b_u`` are split t-of-n with Shamir secret sharing; each
   other client's pair of shares is AES-GCM-encrypted to it under ``HKDF(X25519(c_u, c_v))``, so
   the coordinator routes them but can neither read nor alter them unnoticed.
3. **Mask.** The update is fixed-point encoded into ``Z_{2^64}`` and sent as
   ``y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)`` with ``s_uv`` from X25519(s_u, s_v).
   The pairwise masks cancel in the sum; each ``y_u`` alone is uniform.
4. **Unmask.** Survivors reveal their shares of ``b`` for every survivor and of ``s`` for every client
   that dropped after step 2 (never both for one client). The coordinator rebuilds each secret from t
   shares, checks it against what was published (``b``'s commitment, ``s``'s public key), strips the
   self masks and the dropped clients' left-over pairwise masks, and decodes the sum.

A tampered share is detected in two places: AES-GCM refuses an altered ciphertext (its recipient
skips it and names the sender), and a rebuilt
secret that does not match its commitment or public key marks the shares that disagree. With more
than t honest shares the secret is still recovered from a consistent subset; otherwise
:class:`TamperedShare` is raised. Nothing wrong is ever silently summed.

Example:
    >>> import numpy as np
    >>> clients = [SecAggClient(c, round_tag=b"r1") for c in ("a", "b", "c")]
    >>> roster = [c.advertise() for c in clients]
    >>> server = SecAggServer(roster, threshold=2, round_tag=b"r1", length=2)
    >>> outbox = {c.client_id: c.share_keys(roster, threshold=2) for c in clients}
    >>> inbox = server.route(outbox)
    >>> for c, x in zip(clients, ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0])):
    ...     server.add_masked(c.client_id, c.mask(np.array(x)))
    >>> revealed = {c.client_id: c.reveal(inbox[c.client_id], server.survivors(), server.dropped())
    ...             for c in clients}
    >>> server.unmask(revealed).tolist()
    [9.0, 12.0]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgefleet.errors import EdgefleetError

SCALE_BITS = 24  # fixed point: 2^-24 ≈ 6e-8 resolution
MAX_ABS = 2.0**31  # per coordinate; with fewer than 256 clients, 2^31 · 2^24 · n < 2^63: the sum never wraps
MAX_CLIENTS = 255
PRIME = 2**521 - 1  # Mersenne prime field for Shamir: larger than any 256-bit secret
MAX_SUBSETS = 2_000  # bound on the search for a consistent subset of shares


class SecAggError(EdgefleetError, ValueError):
    """The protocol cannot go on (too few survivors, a malformed roster or vector)."""


class TamperedShare(SecAggError):
    """A share failed authentication, or disagrees with what its owner published."""


# ---------------------------------------------------------------- fixed point and PRG


def encode(x: np.ndarray) -> np.ndarray:
    """Floats → ``Z_{2^64}`` (uint64, two's complement), ``SCALE_BITS`` fractional bits."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all() or (np.abs(x) > MAX_ABS).any():
        raise SecAggError(f"a vector to aggregate must be finite with |x| <= {MAX_ABS:g}")
    return np.round(x * 2.0**SCALE_BITS).astype(np.int64).view(np.uint64)


def decode(v: np.ndarray) -> np.ndarray:
    return v.view(np.int64).astype(np.float64) / 2.0**SCALE_BITS


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` uniform uint64 words from a 32-byte seed (ChaCha20 keystream)."""
    cipher = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(cipher.update(b"\x00" * (8 * length)), dtype="<u8").astype(np.uint64)


def _kdf(secret: bytes, label: str, round_tag: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"edgefleet-secagg|" + label.encode() + b"|" + round_tag).derive(
        secret
    )


def _raw(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    if isinstance(key, X25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pair_mask(s_sk: bytes, other_s_pk: bytes, round_tag: bytes, length: int) -> np.ndarray:
    shared = X25519PrivateKey.from_private_bytes(s_sk).exchange(X25519PublicKey.from_public_bytes(other_s_pk))
    return prg(_kdf(shared, "mask", round_tag), length)


# ---------------------------------------------------------------- Shamir secret sharing


def shamir_split(
    secret: bytes, xs: Sequence[int], threshold: int, rand: Callable[[int], bytes] = os.urandom
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of a degree ``threshold − 1`` polynomial with ``f(0) = secret``."""
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be in [1, {len(xs)}]")
    coeffs = [int.from_bytes(secret, "big")] + [int.from_bytes(rand(66), "big") % PRIME for _ in range(threshold - 1)]
    return {x: sum(c * pow(x, i, PRIME) for i, c in enumerate(coeffs)) % PRIME for x in xs}


def shamir_combine(shares: Mapping[int, int]) -> int:
    """Lagrange interpolation at 0."""
    total = 0
    for xi, yi in shares.items():
        num = den = 1
        for xj in shares:
            if xj != xi:
                num, den = num * -xj % PRIME, den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Mapping[int, int], threshold: int, is_right: Callable[[int], bool]) -> tuple[int, list[int]]:
    """The secret from ``shares`` that ``is_right`` accepts, and the x's of shares that disagree with it.

    Raises:
        TamperedShare: no ``threshold`` of the shares rebuild a secret that checks out.
    """
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret")
    xs = sorted(shares)
    for count, subset in enumerate(itertools.combinations(xs, threshold)):
        if count >= MAX_SUBSETS:
            break
        secret = shamir_combine({x: shares[x] for x in subset})
        if is_right(secret):
            return secret, [x for x in xs if not _on_polynomial(shares, subset, x)]
    raise TamperedShare(f"no {threshold} of the {len(shares)} shares rebuild the published secret")


def _on_polynomial(shares: Mapping[int, int], basis: Sequence[int], x: int) -> bool:
    """Whether share ``x`` lies on the polynomial through the shares at ``basis``."""
    if x in basis:
        return True
    value = 0
    for xi in basis:
        num = den = 1
        for xj in basis:
            if xj != xi:
                num, den = num * (x - xj) % PRIME, den * (xi - xj) % PRIME
        value = (value + shares[xi] * num * pow(den, -1, PRIME)) % PRIME
    return value == shares[x]


# ---------------------------------------------------------------- protocol messages


@dataclass(frozen=True)
class AdvertisedKeys:
    """What a client publishes in step 1: public, safe for the coordinator to store."""

    client: str
    c_pk: bytes  # encrypts shares
    s_pk: bytes  # seeds pairwise masks
    b_commit: bytes  # SHA-256 of the self-mask seed


@dataclass(frozen=True)
class RevealedShare:
    owner: str  # whose secret this is a share of
    kind: str  # "b" (owner survived) or "s" (owner dropped)
    x: int
    y: int


def _check_roster(roster: Sequence[AdvertisedKeys], threshold: int) -> list[AdvertisedKeys]:
    ids = [k.client for k in roster]
    if len(set(ids)) != len(ids):
        raise SecAggError(f"client ids repeat in the roster: {ids}")
    if len(ids) * MAX_ABS * 2.0**SCALE_BITS >= 2.0**63:
        raise SecAggError(f"{len(ids)} clients could overflow the fixed-point sum; at most {MAX_CLIENTS}")
    if not 2 <= threshold <= len(ids):
        raise SecAggError(f"threshold {threshold} must be in [2, {len(ids)}] for {len(ids)} clients")
    return sorted(roster, key=lambda k: k.client)


class SecAggClient:
    """One client's side of a round. Its secrets never leave it except as encrypted Shamir shares."""

    def __init__(self, client_id: str, *, round_tag: bytes) -> None:
        self.client_id, self.round_tag = client_id, round_tag
        self._c, self._s = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._b = os.urandom(32)
        self._roster: list[AdvertisedKeys] = []
        self._threshold = 0
        self._masked = False
        self._split: tuple[frozenset[str], frozenset[str]] | None = None
        self.rejected: list[str] = []  # senders whose share ciphertext failed authentication

    def advertise(self) -> AdvertisedKeys:
        return AdvertisedKeys(
            self.client_id, _raw(self._c.public_key()), _raw(self._s.public_key()), hashlib.sha256(self._b).digest()
        )

    def _share_key(self, other_c_pk: bytes) -> bytes:
        return _kdf(self._c.exchange(X25519PublicKey.from_public_bytes(other_c_pk)), "share", self.round_tag)

    def share_keys(self, roster: Sequence[AdvertisedKeys], *, threshold: int) -> dict[str, bytes]:
        """Step 2: recipient id → AES-GCM ciphertext of its shares of this client's ``s`` key and ``b``."""
        roster = _check_roster(roster, threshold)
        if self.advertise() not in roster:
            raise SecAggError(f"{self.client_id} is not in the roster it was given (or its keys were replaced)")
        self._roster, self._threshold = roster, threshold
        xs = {k.client: i + 1 for i, k in enumerate(roster)}
        s_shares = shamir_split(_raw(self._s), list(xs.values()), threshold)
        b_shares = shamir_split(self._b, list(xs.values()), threshold)
        out = {}
        for k in roster:
            if k.client == self.client_id:
                continue
            x = xs[k.client]
            body = json.dumps(
                {"from": self.client_id, "to": k.client, "x": x, "s": hex(s_shares[x]), "b": hex(b_shares[x])}
            ).encode()
            nonce, aad = os.urandom(12), self._aad(self.client_id, k.client)
            out[k.client] = nonce + AESGCM(self._share_key(k.c_pk)).encrypt(nonce, body, aad)
        # The client keeps its own shares: it is a survivor-revealer for itself too.
        self._own = {"x": xs[self.client_id], "s": s_shares[xs[self.client_id]], "b": b_shares[xs[self.client_id]]}
        return out

    def _aad(self, sender: str, recipient: str) -> bytes:
        return f"{sender}>{recipient}|".encode() + self.round_tag

    def mask(self, vector: np.ndarray) -> np.ndarray:
        """Step 3: the masked, fixed-point vector to send (uint64). Once per round: two vectors under
        the same masks would give away their difference."""
        if not self._roster:
            raise SecAggError("share_keys must run before mask")
        if self._masked:
            raise SecAggError(f"{self.client_id} already masked a vector in this round")
        self._masked = True
        y = encode(vector)
        y = y + prg(_kdf(self._b, "self", self.round_tag), len(y))
        sk = _raw(self._s)
        for k in self._roster:
            if k.client == self.client_id:
                continue
            m = pair_mask(sk, k.s_pk, self.round_tag, len(y))
            y = y + m if k.client > self.client_id else y - m
        return y

    def reveal(
        self, inbox: Mapping[str, bytes], survivors: Sequence[str], dropped: Sequence[str]
    ) -> list[RevealedShare]:
        """Step 4: shares of ``b`` for survivors, of ``s`` for dropped clients.

        The client answers one split of the roster per round (the same question again gets the same
        answer): a coordinator that asked twice with a client moved between the lists would learn
        both of its secrets and unmask its update. A ciphertext in ``inbox`` that fails
        authentication is skipped and its sender listed in :attr:`rejected`; the other survivors'
        shares of that sender's secrets still count.

        Raises:
            SecAggError: the split is not this round's roster, leaves this client out of the
                survivors, has fewer survivors than the threshold, or differs from an earlier one.
        """
        split = (frozenset(survivors), frozenset(dropped))
        if self._split is not None and self._split != split:
            raise SecAggError(f"{self.client_id} already revealed for another split of the roster; refusing")
        if split[0] & split[1]:
            raise SecAggError(
                f"refusing to reveal both secrets of {sorted(split[0] & split[1])}: that would unmask them"
            )
        known = {k.client for k in self._roster}
        if split[0] | split[1] != known or len(survivors) + len(dropped) != len(known):
            raise SecAggError("survivors and dropped must split this round's roster exactly")
        if self.client_id not in split[0]:
            raise SecAggError(f"{self.client_id} is listed as dropped: it has nothing to reveal")
        if len(survivors) < self._threshold:
            raise SecAggError(f"{len(survivors)} survivors, fewer than the threshold {self._threshold}")
        self._split = split
        c_pks = {k.client: k.c_pk for k in self._roster}
        opened = {self.client_id: self._own}
        self.rejected = []
        for sender, blob in inbox.items():
            try:
                if sender not in c_pks or sender == self.client_id:
                    raise InvalidTag
                body = AESGCM(self._share_key(c_pks[sender])).decrypt(
                    blob[:12], blob[12:], self._aad(sender, self.client_id)
                )
            except InvalidTag:
                self.rejected.append(sender)  # altered in transit, or not from whom it claims
                continue
            msg = json.loads(body)
            opened[sender] = {"x": msg["x"], "s": int(msg["s"], 16), "b": int(msg["b"], 16)}
        out = []
        for owner in survivors:
            if owner in opened:
                out.append(RevealedShare(owner, "b", opened[owner]["x"], opened[owner]["b"]))
        for owner in dropped:
            if owner in opened:
                out.append(RevealedShare(owner, "s", opened[owner]["x"], opened[owner]["s"]))
        return out


@dataclass
class SecAggServer:
    """The coordinator's side: it holds public keys, masked vectors, revealed shares, and the sum."""

    roster: Sequence[AdvertisedKeys]
    threshold: int
    round_tag: bytes
    length: int
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    tampered: list[str] = field(default_factory=list)  # holders whose shares disagreed, as "holder→owner"

    def __post_init__(self) -> None:
        self.roster = _check_roster(self.roster, self.threshold)
        self._keys = {k.client: k for k in self.roster}
        self._closed = False

    @staticmethod
    def route(outboxes: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Turn each sender's outbox into each recipient's inbox (the coordinator only relays)."""
        inboxes: dict[str, dict[str, bytes]] = {}
        for sender, box in outboxes.items():
            for recipient, blob in box.items():
                inboxes.setdefault(recipient, {})[sender] = blob
        return inboxes

    def add_masked(self, client: str, vector: np.ndarray) -> None:
        if self._closed:
            raise SecAggError(f"{client}'s vector came after the survivors were fixed; it is discarded")
        if client not in self._keys:
            raise SecAggError(f"{client!r} is not in this round's roster")
        if vector.dtype != np.uint64 or vector.shape != (self.length,):
            raise SecAggError(f"{client}: expected a uint64 vector of length {self.length}")
        self.masked[client] = vector

    def survivors(self) -> list[str]:
        return sorted(self.masked)

    def dropped(self) -> list[str]:
        return sorted(set(self._keys) - set(self.masked))

    def close(self) -> None:
        """Fix the survivors: a late vector is refused from now on (its owner's ``s`` may be revealed)."""
        if len(self.masked) < self.threshold:
            raise SecAggError(f"{len(self.masked)} masked vectors, fewer than the threshold {self.threshold}")
        self._closed = True

    def unmask(self, revealed: Mapping[str, Sequence[RevealedShare]]) -> np.ndarray:
        """The decoded sum of the survivors' vectors, from the shares the survivors revealed.

        Raises:
            TamperedShare: a secret could not be rebuilt from shares that agree with what was published.
            SecAggError: too few shares.
        """
        self.close()
        survivors, dropped = self.survivors(), self.dropped()
        by_owner: dict[tuple[str, str], dict[int, int]] = {}
        holders: dict[tuple[str, str, int], str] = {}
        for holder, shares in revealed.items():
            if holder not in self.masked:
                continue  # only survivors take part in unmasking
            for sh in shares:
                by_owner.setdefault((sh.owner, sh.kind), {})[sh.x] = sh.y
                holders[(sh.owner, sh.kind, sh.x)] = holder
        total = np.zeros(self.length, dtype=np.uint64)
        for u in survivors:
            total = total + self.masked[u]
        for u in survivors:  # strip self masks
            b = self._rebuild(
                u, "b", by_owner, holders, lambda v, u=u: hashlib.sha256(_bytes32(v)).digest() == self._keys[u].b_commit
            )
            total = total - prg(_kdf(b, "self", self.round_tag), self.length)
        for v in dropped:  # strip the pairwise masks survivors added towards clients that dropped
            s_sk = self._rebuild(v, "s", by_owner, holders, lambda val, v=v: _x25519_pk(val) == self._keys[v].s_pk)
            for u in survivors:
                m = pair_mask(s_sk, self._keys[u].s_pk, self.round_tag, self.length)
                total = total - m if v > u else total + m
        return decode(total)

    def _rebuild(self, owner: str, kind: str, by_owner: dict, holders: dict, is_right: Callable[[int], bool]) -> bytes:
        shares = by_owner.get((owner, kind), {})
        secret, bad = reconstruct(shares, self.threshold, is_right)
        self.tampered += [f"{holders[(owner, kind, x)]}→{owner}" for x in bad]
        return _bytes32(secret)


def _bytes32(v: int) -> bytes:
    return v.to_bytes(32, "big") if v < 2**256 else b"\xff" * 33  # a value no real secret has


def _x25519_pk(v: int) -> bytes | None:
    if v >= 2**256:
        return None
    return _raw(X25519PrivateKey.from_private_bytes(v.to_bytes(32, "big")).public_key())
