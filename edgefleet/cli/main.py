"""The ``edgefleet`` command: generate, up, demo, status, train, federate, audit, models, auth, bench.

This module is the entry point and imports only the standard library and the SDK, so the base
install (the wheel without extras: grpcio + protobuf) has a working ``edgefleet generate`` and
``edgefleet --version``. The platform's commands live in ``edgefleet.cli.commands`` and are
registered only when the ``platform`` extra is installed; without it they answer in one line
which extra to install.

Global options (``--config``/``-c``, ``--address``, ``--json``) work before or after the
subcommand; ``$EDGEFLEET_CONFIG`` names the config when ``--config`` is not given. Every expected
failure prints one line and exits 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from importlib import metadata
from pathlib import Path

from edgefleet.errors import ConfigError, EdgefleetError

CONFIG_ENV = "EDGEFLEET_CONFIG"
DEFAULT_TARGET = "127.0.0.1:9000"  # ports.grpc of the default config
# What a base install lacks for the platform's commands; rich, pydantic and yaml are imported by
# every one of them, Ray and torch by most.
PLATFORM_EXTRA = "install edgefleet with its [platform] extra (in a clone: make setup; see the README's Install)"
PLATFORM_PACKAGES = {
    *("rich", "pydantic", "yaml", "ray", "torch", "transformers", "mlflow", "opacus", "peft", "accelerate"),
    *("gguf", "safetensors", "deepspeed", "cryptography", "matplotlib", "prometheus_client", "filelock"),
}
PLATFORM_COMMANDS = {
    "up": "start the fleet in the foreground; Ctrl-C stops it",
    "demo": "the scripted tour on the embedded fleet",
    "status": "the live fleet: health, queues, tokens/s, SLA, round, champion, ε",
    "auth": "bearer tokens and TLS certificates",
    "bench": "measurements",
    "train": "private training",
    "federate": "federated DP rounds across the edge nodes",
    "audit": "privacy audit",
    "models": "model cache and the MLflow registry",
}


def version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def _read_pem(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror}") from None


def _fleet_of(config: str) -> tuple[str, Path | None]:
    """A config's gRPC address (its front's host, else loopback) and its TLS certificate (self-signed:
    the root to trust), a relative path taken from the config's folder. Reading a config needs the
    platform extra (pydantic, yaml)."""
    from edgefleet.config import load_config

    cfg = load_config(config)
    host = cfg.ingress.host if cfg.ingress.host not in ("0.0.0.0", "::") else "127.0.0.1"
    cert = Path(cfg.auth.tls_cert) if cfg.auth.tls_cert else None
    if cert is not None and not cert.is_absolute():
        cert = Path(config).parent / cert
    return f"{host}:{cfg.ports.grpc}", cert


def _client(args: argparse.Namespace):
    """The SDK client for ``generate`` and ``feedback``."""
    from edgefleet.client import Client

    # The fleet to talk to: --target, else the config's (-c or $EDGEFLEET_CONFIG), else the default.
    # Its certificate is trusted unless --ca names another.
    target, cert = args.target, None
    if args.config:
        try:
            config_target, cert = _fleet_of(args.config)
            target = target or config_target
        except (ModuleNotFoundError, ConfigError) as exc:
            if not getattr(args, "config_from_env", False):
                raise
            # $EDGEFLEET_CONFIG is ambient: a base install cannot read it, a stale one may be gone
            print(f"note: ${CONFIG_ENV} not used ({exc})", file=sys.stderr)
    target = target or DEFAULT_TARGET
    ca, flag = (args.ca, "--ca") if args.ca else (cert, f"auth.tls_cert of {args.config}")
    roots = _read_pem(ca, flag) if ca else None
    return Client(
        target,
        token=args.token or os.environ.get("EDGEFLEET_TOKEN"),
        tls=bool(args.tls or roots),
        root_certificates=roots,
    )


def cmd_feedback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        node = client.feedback(args.request_id, good=args.good, correction=args.correction, timeout=args.timeout)
    print(f"kept on {node}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        chunks = client.stream(
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            timeout=args.timeout,
            route=args.route,
            site=args.site,
            temperature=args.temperature,
        )
        for chunk in chunks:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            if chunk.final:
                d = chunk.completion
                sys.stdout.write("\n")
                sla = "met" if d.sla_met else "missed"
                print(
                    f"{d.served_by} · {d.model_name} {d.model_version} · "
                    f"TTFT {d.ttft_ms:.0f} ms · total {d.total_ms:.0f} ms · SLA {sla}",
                    file=sys.stderr,
                )
    return 0


def _add_connection(gen: argparse.ArgumentParser) -> None:
    gen.add_argument(
        "--target", help=f"gRPC address (default: the config's ports.grpc on 127.0.0.1, else {DEFAULT_TARGET})"
    )
    gen.add_argument("--token", help="bearer token (default: $EDGEFLEET_TOKEN)")
    gen.add_argument("--tls", action="store_true", help="connect with TLS (system roots, or --ca)")
    gen.add_argument("--ca", help="PEM certificate(s) to trust, e.g. the gRPC front's self-signed cert.pem")
    gen.set_defaults(uses_address=False)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="stream one answer from a running fleet over gRPC")
    gen.add_argument("prompt")
    _add_connection(gen)
    gen.add_argument("--timeout", type=float, default=None, help="seconds: the gRPC deadline and the SLA")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--route", choices=["auto", "edge", "cloud"], default="auto")
    gen.add_argument("--site", default="", help="your locality hint, e.g. edge-1")
    gen.set_defaults(func=cmd_generate)

    fb = sub.add_parser("feedback", help="rate an answer (kept on its site's edge node, trains its private updates)")
    fb.add_argument("request_id", help="the answer's request id")
    rating = fb.add_mutually_exclusive_group(required=True)
    rating.add_argument("--good", dest="good", action="store_true", default=None)
    rating.add_argument("--bad", dest="good", action="store_false")
    fb.add_argument("--correction", help="the answer it should have been")
    fb.add_argument("--timeout", type=float, default=10.0, help="seconds")
    _add_connection(fb)
    fb.set_defaults(func=cmd_feedback)


def _add_platform_stubs(sub: argparse._SubParsersAction, missing: str) -> None:
    """The platform's commands in a base install: each says, in one line, what to install."""

    def needs_platform(args: argparse.Namespace) -> int:
        raise EdgefleetError(
            f"`edgefleet {args.command}` needs the platform extra ({missing} is missing): {PLATFORM_EXTRA}"
        )

    for name, help_text in PLATFORM_COMMANDS.items():
        stub = sub.add_parser(name, help=f"{help_text} [needs the platform extra]", add_help=False)
        stub.set_defaults(func=needs_platform, takes_any_arguments=True, supports_json=True)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are SUPPRESS: a value given before the subcommand is not then
    # overwritten by the subcommand's default (argparse copies a subparser's defaults over).
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--config",
        "-c",
        help=f"YAML config (default: ${CONFIG_ENV}, else the embedded 3-edge + cloud fleet)",
        **default,
    )
    parser.add_argument(
        "--address", help="Ray cluster to join (default: ray.address, else the running fleet)", **default
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (status, models list)", **default)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps no public list of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgefleet {version()}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    try:
        from edgefleet.cli import commands
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in PLATFORM_PACKAGES:
            raise  # a broken install or a bug, not the base install
        _add_platform_stubs(sub, exc.name)
    else:
        commands.add_commands(sub)
    for child in _subparsers(parser):
        _add_global_options(child, top=False)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` takes it; a usage error exits 2 with argparse's message."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):  # a platform stub takes any: it runs nothing
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # Silently ignored options would hide a mistake: refuse them where a command does not use them.
    unused = [
        flag
        for flag, value, used in (
            ("--config", args.config, getattr(args, "uses_config", True)),
            ("--address", args.address, getattr(args, "uses_address", True)),
        )
        if value and not used
    ]
    if unused:
        parser.error(f"{' and '.join(unused)}: not used by `edgefleet {args.command}`")
    if args.json and not getattr(args, "supports_json", False):
        parser.error(f"--json does not apply to `{args.command}` (it does to: status, models list)")
    if args.config is None:
        args.config = os.environ.get(CONFIG_ENV) or None
        args.config_from_env = args.config is not None
    return args


def main(argv: list[str] | None = None) -> int:
    from edgefleet.client.errors import EdgefleetClientError

    args = parse(argv)
    # A shell without job control starts a background command (`edgefleet up &` in a script, CI)
    # with SIGINT ignored, and Python leaves it ignored: Ctrl-C or `kill -INT` would never stop it.
    if threading.current_thread() is threading.main_thread():  # main() called from a thread: not ours to set
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # transformers' deprecation notices about its own internals say nothing a user can act on
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    try:
        return args.func(args)
    except (EdgefleetError, EdgefleetClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a partial install: rich and pydantic, say, but no Ray or torch
        if (exc.name or "").split(".")[0] not in PLATFORM_PACKAGES:
            raise
        print(
            f"error: `edgefleet {args.command}` needs the platform extra ({exc.name} is missing): {PLATFORM_EXTRA}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
