"""The platform's commands: up, demo, status, auth, bench, train, federate, audit, models.

They need the ``platform`` extra (rich, pydantic, Ray, torch, ...). ``edgefleet.cli.main`` is the
entry point; it registers these only when that extra is installed. Each command group is a module
of this package with an ``add_parser(sub)``. Every expected failure (bad config, unreachable
cluster, failed fetch) raises an ``EdgefleetError``, which the entry point prints as one line with
exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse

from edgefleet.cli import audit, auth, bench, demo, federate, models, status, train, up

GROUPS = (up, demo, status, auth, bench, train, federate, audit, models)  # in `edgefleet --help` order


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the platform's commands on the entry point's subparsers."""
    for group in GROUPS:
        group.add_parser(sub)
