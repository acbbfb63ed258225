"""The ``edgefleet`` command line: ``main`` is its entry point (``edgefleet.cli.main``).

One module per command group (``up``, ``demo``, ``status``, ``auth``, ``bench``, ``train``,
``federate``, ``audit``, ``models``), registered by ``commands``; what they share (consoles,
progress steps, starting or joining the fleet) lives in ``fleet``, tables in ``tables``. Nothing
else in edgefleet imports this package.
"""

from edgefleet.cli.main import main

__all__ = ["main"]
