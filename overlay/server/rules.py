"""The overlay firewall's rules: numbered, ordered, first match wins. Pure logic.

A rule allows or denies new flows in one direction: ``to-device`` (the
management side opens a flow towards a device, the Axis "server-initiated"
case) or ``from-device`` (a device opens a flow towards the service range). It
names a protocol and destination ports itself, or takes every entry of a
profile. Sources (for to-device flows) and destinations (for from-device flows)
narrow it to address ranges. A flow that no rule allows is dropped: the
firewall denies by default. Replies of an allowed flow never meet the rules;
the flow table lets them pass.

Rules carry numbers, as on Allied Telesis firewalls: a rule is inserted
between two others by choosing a free number, moved by giving it another, and
``renumber`` spaces them out again (10, 20, 30…) without changing their order.

A from-device UDP or TCP match may carry a SIP option (``sip = "registrar"`` or
``"any-proxy"``): the flows it allows are read for SIP registrations, which
keep them open and let calls in (:mod:`overlay.server.sip`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from overlay import configfile
from overlay.exceptions import ConfigError
from overlay.server.sip import MODES as SIP_MODES

TO_DEVICE = "to-device"
FROM_DEVICE = "from-device"
DIRECTIONS = (TO_DEVICE, FROM_DEVICE)
ACTIONS = ("allow", "deny")
PROTOCOLS: dict[str, int | None] = {"any": None, "icmp": 1, "tcp": 6, "udp": 17}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items() if number is not None}
BUILTIN_PROFILES = Path(__file__).with_name("profiles")
DEFAULT_RULES: tuple[dict[str, Any], ...] = ({"profile": "ovoc-management"},)
STEP = 10  # the gap between numbers that config rules and `renumber` leave
MAX_NUMBER = 1_000_000

PortRanges = tuple[tuple[int, int], ...]


class RuleError(ConfigError):
    """A rule or a change of the rules is wrong; the message says what to do."""


def parse_ports(text: str) -> PortRanges:
    """``"161"``, ``"80,443"``, ``"16384-32767"`` into (low, high) pairs."""
    ranges = []
    for part in text.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise RuleError(f"ports {text!r}: {part!r} is not a port or a range like 16384-32767")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise RuleError(f"ports {text!r}: {part!r} must lie within 1-65535, low to high")
        ranges.append((first, last))
    return tuple(ranges)


def format_ports(ports: PortRanges) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ports) or "any"


@dataclass(frozen=True)
class Match:
    """One protocol and port set in one direction: a profile entry, or a rule's own."""

    direction: str
    protocol: int | None  # None: any protocol
    ports: PortRanges  # empty: any port (the only choice for protocols without ports)
    purpose: str = ""
    sip: str | None = None  # SIP_MODES: read the flows it allows for registrations

    def covers(self, direction: str, protocol: int, port: int | None) -> bool:
        if direction != self.direction:
            return False
        if self.protocol is not None and protocol != self.protocol:
            return False
        if not self.ports:
            return True
        return port is not None and any(low <= port <= high for low, high in self.ports)

    def describe(self) -> str:
        name = "any" if self.protocol is None else PROTOCOL_NAMES[self.protocol]
        sip = f" sip {self.sip}" if self.sip else ""
        return f"{self.direction} {name} {format_ports(self.ports)}{sip}"


def make_match(
    direction: str, protocol: str, ports: str | None, purpose: str = "", sip: str | None = None
) -> Match:
    if sip is not None:
        if sip not in SIP_MODES:
            raise RuleError(f"sip {sip!r} must be one of {', '.join(SIP_MODES)}")
        if direction != FROM_DEVICE or protocol not in ("tcp", "udp"):
            raise RuleError(
                "sip reads the registrations a device sends: it needs direction "
                "from-device and protocol udp or tcp"
            )
    if direction not in DIRECTIONS:
        raise RuleError(f"direction {direction!r} must be one of {', '.join(DIRECTIONS)}")
    if protocol not in PROTOCOLS:
        raise RuleError(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    if ports is not None and protocol not in ("tcp", "udp"):
        raise RuleError(f"ports need protocol tcp or udp, not {protocol!r}")
    return Match(direction, PROTOCOLS[protocol], parse_ports(ports) if ports else (), purpose, sip)


@dataclass(frozen=True)
class Profile:
    """A named set of entries shipped as a data file (or written by the operator)."""

    name: str
    description: str
    entries: tuple[Match, ...]


def load_profile(path: Path) -> Profile:
    """Read one profile file; errors name the file and the entry."""
    root = configfile.load(path)
    description = root.optional_str("description") or ""
    entries = []
    for table in root.tables("entry"):
        try:
            entry = make_match(
                table.string("direction"),
                table.string("protocol"),
                table.optional_str("ports"),
                table.string("purpose", "-"),
                table.optional_str("sip"),
            )
        except RuleError as exc:
            table.fail_here(str(exc))
        table.done()
        entries.append(entry)
    root.done()
    if not entries:
        raise ConfigError(f"{path}: a profile needs at least one [[entry]]")
    return Profile(path.stem, description, tuple(entries))


def load_profiles(directory: Path | None) -> dict[str, Profile]:
    """The built-in profiles, plus the operator's ``*.toml`` files in ``directory``."""
    profiles = {p.stem: load_profile(p) for p in sorted(BUILTIN_PROFILES.glob("*.toml"))}
    if directory is None:
        return profiles
    if not directory.is_dir():
        raise ConfigError(f"profiles folder {directory} does not exist")
    for path in sorted(directory.glob("*.toml")):
        if path.stem in profiles:
            raise ConfigError(
                f"{path}: a built-in profile is named {path.stem!r} already; rename the file"
            )
        profiles[path.stem] = load_profile(path)
    return profiles


Networks = tuple[ipaddress.IPv4Network, ...]


def parse_networks(key: str, values: Any) -> Networks:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RuleError(f"{key} must be a list of CIDR ranges like 192.0.2.0/24")
    try:
        return tuple(ipaddress.IPv4Network(v) for v in values)
    except ValueError as exc:
        raise RuleError(f"{key}: {exc}") from None


SPEC_KEYS = (
    "action",
    "profile",
    "direction",
    "protocol",
    "ports",
    "sources",
    "destinations",
    "sip",
    "comment",
)


@dataclass
class Rule:
    """One numbered rule; ``spec`` is what the operator wrote, kept for listing and saving."""

    number: int
    action: str
    matches: tuple[Match, ...]
    sources: Networks  # management-side source ranges for to-device flows; empty: any
    destinations: Networks  # service addresses for from-device flows; empty: any
    spec: dict[str, Any]
    hits: int = 0  # flows this rule allowed or denied since the server started
    sip: bool = False  # does any of its matches read SIP?

    def covers(self, direction: str, protocol: int, port: int | None, peer: int) -> bool:
        peers = self.sources if direction == TO_DEVICE else self.destinations
        if peers and not any(peer & int(n.netmask) == int(n.network_address) for n in peers):
            return False
        return any(m.covers(direction, protocol, port) for m in self.matches)

    def sip_mode(self, direction: str, protocol: int, port: int | None) -> str | None:
        """The SIP option of the match that covers a flow this rule allowed, if any."""
        for match in self.matches:
            if match.sip and match.covers(direction, protocol, port):
                return match.sip
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, **self.spec, "hits": self.hits}


def make_rule(number: int, spec: dict[str, Any], profiles: dict[str, Profile]) -> Rule:
    """Check ``spec`` (the keys of SPEC_KEYS) and build the rule it describes."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise RuleError(f"unknown rule key {unknown[0]!r}; rules know {', '.join(SPEC_KEYS)}")
    if not 1 <= number <= MAX_NUMBER:
        raise RuleError(f"rule number {number} must be from 1 to {MAX_NUMBER}")
    spec = {k: v for k, v in spec.items() if v not in (None, "", [])}
    action = spec.setdefault("action", "allow")
    if action not in ACTIONS:
        raise RuleError(f"action {action!r} must be allow or deny")
    profile = spec.get("profile")
    if profile is not None:
        if any(k in spec for k in ("direction", "protocol", "ports")):
            raise RuleError("a rule takes either a profile or direction/protocol/ports, not both")
        if profile not in profiles:
            raise RuleError(
                f"no profile named {profile!r}; known: {', '.join(sorted(profiles))} "
                "(add your own as NAME.toml in firewall.profiles_dir)"
            )
        matches = profiles[profile].entries
        if "sip" in spec:  # another mode for the profile's SIP entries
            if spec["sip"] not in SIP_MODES:
                raise RuleError(f"sip {spec['sip']!r} must be one of {', '.join(SIP_MODES)}")
            if not any(m.sip for m in matches):
                raise RuleError(f"profile {profile!r} has no SIP entries for sip to change")
            matches = tuple(replace(m, sip=spec["sip"]) if m.sip else m for m in matches)
    else:
        if "direction" not in spec:
            raise RuleError("a rule needs a profile, or a direction (to-device or from-device)")
        spec.setdefault("protocol", "any")
        matches = (
            make_match(spec["direction"], spec["protocol"], spec.get("ports"), sip=spec.get("sip")),
        )
    sources = parse_networks("sources", spec.get("sources", []))
    destinations = parse_networks("destinations", spec.get("destinations", []))
    directions = {m.direction for m in matches}
    if sources and TO_DEVICE not in directions:
        raise RuleError("sources narrow to-device flows; this rule has none")
    if destinations and FROM_DEVICE not in directions:
        raise RuleError("destinations narrow from-device flows; this rule has none")
    sip = action == "allow" and any(m.sip for m in matches)
    return Rule(number, action, matches, sources, destinations, spec, sip=sip)


@dataclass
class Ruleset:
    """The ordered rules and the count of flows that no rule allowed."""

    rules: list[Rule] = field(default_factory=list)
    unmatched: int = 0  # new flows denied because no rule matched

    @classmethod
    def build(cls, specs: list[dict[str, Any]], profiles: dict[str, Profile]) -> Ruleset:
        """Rules from specs that may carry their ``number``; unnumbered ones get 10, 20…"""
        ruleset = cls()
        for i, spec in enumerate(specs, 1):
            spec = dict(spec)
            number = spec.pop("number", i * STEP)
            if not isinstance(number, int) or isinstance(number, bool):
                raise RuleError(f"rule number {number!r} must be a whole number")
            ruleset.insert(make_rule(number, spec, profiles))
        return ruleset

    def decide(self, direction: str, protocol: int, port: int | None, peer: int) -> Rule | None:
        """The first rule that covers a new flow, or None (the default: deny)."""
        for rule in self.rules:
            if rule.covers(direction, protocol, port, peer):
                rule.hits += 1
                return rule
        self.unmatched += 1
        return None

    def _find(self, number: int) -> Rule:
        for rule in self.rules:
            if rule.number == number:
                return rule
        raise RuleError(f"there is no rule {number}; see overlay rule list")

    def next_number(self) -> int:
        return (self.rules[-1].number // STEP + 1) * STEP if self.rules else STEP

    def insert(self, rule: Rule) -> None:
        """Add ``rule`` at its number; a number in use is refused, never shifted silently."""
        if any(r.number == rule.number for r in self.rules):
            raise RuleError(
                f"rule {rule.number} exists already; choose a free number, "
                "or make room with overlay rule renumber"
            )
        self.rules.append(rule)
        self.rules.sort(key=lambda r: r.number)

    def remove(self, number: int) -> Rule:
        rule = self._find(number)
        self.rules.remove(rule)
        return rule

    def move(self, number: int, to: int) -> None:
        """Give rule ``number`` the free number ``to``, which places it there in the order."""
        rule = self._find(number)
        if not 1 <= to <= MAX_NUMBER:
            raise RuleError(f"rule number {to} must be from 1 to {MAX_NUMBER}")
        self.rules.remove(rule)
        try:
            self.insert(replace(rule, number=to))
        except RuleError:
            self.insert(rule)
            raise

    def renumber(self, start: int = STEP, step: int = STEP) -> None:
        """Number the rules start, start+step… in their present order."""
        if start < 1 or step < 1 or start + step * len(self.rules) > MAX_NUMBER:
            raise RuleError("renumber needs a start and a step of at least 1")
        self.rules = [replace(r, number=start + i * step) for i, r in enumerate(self.rules)]

    def specs(self) -> list[dict[str, Any]]:
        """What to save: every rule's spec with its number, in order."""
        return [{"number": r.number, **r.spec} for r in self.rules]
