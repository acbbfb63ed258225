"""``edgefleet auth …``: bearer tokens (the config stores their hashes only) and TLS certificates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError


def add_parser(sub: Any) -> None:
    auth = sub.add_parser("auth", help="bearer tokens: the config stores their hashes only").add_subparsers(
        dest="auth_command", required=True
    )
    new = auth.add_parser("new", help="make a random token and print it with its hash")
    new.set_defaults(func=cmd_new, uses_config=False, uses_address=False)
    hashed = auth.add_parser("hash", help="read a token on stdin, print the hash for auth.tokens")
    hashed.set_defaults(func=cmd_hash, uses_config=False, uses_address=False)
    cert = auth.add_parser("cert", help="write a self-signed TLS certificate and key for the gRPC front (testing)")
    cert.add_argument("--host", action="append", default=None, help="DNS name or IP it is for (repeatable)")
    cert.add_argument("--out", default="tls", help="folder for cert.pem and key.pem")
    cert.add_argument("--days", type=int, default=30)
    cert.set_defaults(func=cmd_cert, uses_config=False, uses_address=False)


def cmd_new(args: argparse.Namespace) -> int:
    from edgefleet.security import hash_token, new_token

    token = new_token()
    print(f"token (give to the caller, store nowhere else): {token}")
    print(f"hash (put under auth.tokens):                  {hash_token(token)}")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    from edgefleet.security import hash_token

    token = sys.stdin.readline().strip()  # stdin, not argv: argv shows in `ps` and shell history
    try:
        print(hash_token(token))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    from edgefleet.tls import self_signed

    hosts = args.host or ["localhost", "127.0.0.1"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(hosts, days=args.days)
    (out / "cert.pem").write_bytes(cert)
    key_path = out / "key.pem"
    key_path.touch(mode=0o600)  # the key is a secret: owner-only before it holds anything
    key_path.write_bytes(key)
    print(f"wrote {out / 'cert.pem'} and {key_path} for {', '.join(hosts)} ({args.days} days)")
    print(f"config: auth: {{tls_cert: {out / 'cert.pem'}, tls_key: {key_path}}}")
    print("clients: Client(target, tls=True, root_certificates=open('cert.pem', 'rb').read())")
    return 0
