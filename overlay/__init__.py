"""The overlay: wire protocol v1, packet parsing, address plan, TUN I/O, and the server."""

__version__ = "0.2.0"  # the package, status, metrics and --version read it here
