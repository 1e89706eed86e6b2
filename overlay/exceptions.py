"""Exceptions of the overlay package.

Tree::

    OverlayError
    ├── ConfigError          a config file or option is wrong; the message names the key
    ├── FrameError           a binary frame does not split into whole IP packets
    ├── HelloError           the hello message is missing, malformed or of another version
    ├── PoolExhaustedError   no free overlay address is left in the pool
    ├── StoreError           a store (leases, QoE reports) cannot be opened, read or written
    ├── VrfLimitError        a device would hold more VRFs than it may
    ├── TunError (OSError)   a TUN device cannot be created or configured
    ├── ControlError         the local control socket of a running process cannot be reached
    └── CommandError         a running process refused a command; the message says why

Every message is one line meant for an operator: what is wrong and what to do.
"""

from __future__ import annotations


class OverlayError(Exception):
    """Root of every error raised on purpose by the overlay package."""


class ConfigError(OverlayError):
    """A config file or option is wrong; the message names the file and key."""


class FrameError(OverlayError):
    """A binary frame does not split exactly into whole IP packets."""


class HelloError(OverlayError):
    """The hello message is missing, malformed, or of an unknown protocol version."""


class PoolExhaustedError(OverlayError):
    """Every address of the overlay pool is leased."""


class StoreError(OverlayError):
    """A store (leases, QoE reports) cannot be opened, read or written."""


class VrfLimitError(OverlayError):
    """A device asked for a lease in one VRF more than its enrolment allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the device holds its limit of {limit} VRFs")
        self.limit = limit


class TunError(OverlayError, OSError):
    """A TUN device cannot be created or configured."""


class ControlError(OverlayError):
    """The control socket of a running server or agent cannot be reached."""


class CommandError(OverlayError):
    """A running server refused a command sent over its control socket."""


class WorkerError(OverlayError):
    """A worker process of the server (listen.workers) cannot start, or none answers."""
