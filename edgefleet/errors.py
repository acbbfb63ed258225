"""The root of edgefleet's server-side exceptions.

Every package raises a subclass of :class:`EdgefleetError`, so the CLI can print one clear line for
any of them instead of a traceback. The client SDK has its own, separate hierarchy (it must not
import this package's dependencies).
"""


class EdgefleetError(Exception):
    """Base class of every error edgefleet raises on purpose."""


class ConfigError(EdgefleetError, ValueError):
    """The configuration is invalid; the message names the field and the reason."""


class FleetError(EdgefleetError):
    """The Ray fleet could not be started, joined or used as asked."""


class ModelError(EdgefleetError):
    """A model could not be fetched, converted or loaded."""
