"""Server name and password from DHCP, as H3C devices take them (options 253 and 252).

The agent does not speak DHCP: it reads the lease file the host's DHCP client
keeps, in one of two formats.

- ISC dhclient (``/var/lib/dhcp/dhclient.IFACE.leases``): a log of
  ``lease { … }`` blocks, the last one current; options it has no name for
  appear as ``option unknown-253 "text";`` or as colon-separated hex bytes.
- systemd-networkd (``/run/systemd/netif/leases/IFINDEX``): ``KEY=value``
  lines; private options 224-254 appear as ``OPTION_253=<hex bytes>``.

Parsing is pure; :class:`LeaseWatcher` only remembers what it saw last, so the
caller can tell a change (rebuild the tunnel) from a rewrite with the same
values (leave it alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance.exceptions import InputError

OPTION_SERVER = 253
OPTION_PASSWORD = 252
FORMATS = ("auto", "dhclient", "networkd")

_DHCLIENT_BLOCK = re.compile(r"lease\s*\{(.*?)\}", re.S)
_DHCLIENT_OPTION = re.compile(r"option\s+unknown-(\d+)\s+(.*?);\s*$", re.M)
_HEX_BYTES = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2})*")


@dataclass(frozen=True)
class DhcpValues:
    """What DHCP says; None where the lease carries no such option."""

    server: str | None
    password: str | None


def _dhclient_value(raw: str) -> bytes:
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"'):
        return raw[1:-1].encode().decode("unicode_escape").encode("latin-1")
    if _HEX_BYTES.fullmatch(raw):
        return bytes(int(part, 16) for part in raw.split(":"))
    raise InputError(f"cannot read DHCP option value {raw!r}")


def parse_dhclient(text: str) -> dict[int, bytes]:
    """The private options of the last lease in a dhclient lease file."""
    blocks = _DHCLIENT_BLOCK.findall(text)
    if not blocks:
        return {}
    return {int(code): _dhclient_value(raw) for code, raw in _DHCLIENT_OPTION.findall(blocks[-1])}


def parse_networkd(text: str) -> dict[int, bytes]:
    """The private options of a systemd-networkd lease file."""
    options = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("OPTION_") and key[7:].isdigit():
            try:
                options[int(key[7:])] = bytes.fromhex(value.strip())
            except ValueError:
                raise InputError(f"cannot read DHCP option {key}={value!r}") from None
    return options


def parse_lease(text: str, kind: str = "auto") -> DhcpValues:
    """Options 253 (server) and 252 (password) from a lease file's text."""
    if kind == "auto":
        kind = "dhclient" if _DHCLIENT_BLOCK.search(text) else "networkd"
    options = parse_dhclient(text) if kind == "dhclient" else parse_networkd(text)

    def text_of(code: int) -> str | None:
        value = options.get(code)
        if value is None:
            return None
        decoded = value.rstrip(b"\x00").decode("utf-8", errors="replace").strip()
        return decoded or None

    return DhcpValues(server=text_of(OPTION_SERVER), password=text_of(OPTION_PASSWORD))


class LeaseWatcher:
    """Reads a lease file and says whether its values changed since the last read."""

    def __init__(self, path: Path, kind: str = "auto") -> None:
        self.path = path
        self.kind = kind
        self.values = DhcpValues(None, None)

    def read(self) -> bool:
        """Re-read the file; True when the values differ from the last ones seen.

        A missing file counts as a lease without the options: the configured
        values then apply. An empty or unreadable file is one being rewritten:
        the last values stay.
        """
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError:
            return False
        if not text.strip() and self.path.exists():
            return False
        try:
            values = parse_lease(text, self.kind)
        except InputError:
            return False
        changed = values != self.values
        self.values = values
        return changed
