"""Exceptions of the appliance package.

Tree::

    ApplianceError
    ├── InputError               a file or argument given on the command line is wrong
    ├── VrfError                 a VRF cannot be used (no kernel support, not a VRF device)
    │   └── VrfMissing           its namespace or device does not exist (yet): retried
    └── ConnectError             one attempt to open a tunnel failed; the message says why
        ├── RefusedError         the server answered the upgrade with an HTTP refusal
        ├── CertificateError     the server's certificate did not verify
        └── UnreachableError     no TCP/TLS connection, or no answer in time (also an OSError)

Configuration errors are :class:`overlay.exceptions.ConfigError`: both programs
read their files with the same code.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Root of every error raised on purpose by the appliance package."""


class InputError(ApplianceError):
    """A file or argument given on the command line is wrong."""


class VrfError(ApplianceError):
    """A VRF cannot be used: its namespace or device is missing, or the kernel lacks support."""


class VrfMissing(VrfError):
    """A VRF's namespace or device does not exist yet; the agent keeps looking for it."""


class ConnectError(ApplianceError):
    """One attempt to open a tunnel failed."""


class RefusedError(ConnectError):
    """The server refused the tunnel before the upgrade, with an HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class CertificateError(ConnectError):
    """The server's certificate did not verify against the configured CA and name."""


class UnreachableError(ConnectError, OSError):
    """The server could not be reached or did not answer in time."""
