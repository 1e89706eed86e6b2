"""SIP, read only as far as the firewall needs to keep a registered device reachable. Pure.

A SIP phone behind the overlay registers with a registrar on the server side
(REGISTER, answered 200 OK with how long the registration lasts). Calls then
come from the registrar (or another proxy) to the registered contact at any
time, long after a plain UDP flow would have aged out. So, as the Allied
Telesis SIP ALG does (seed 001), the firewall reads the REGISTER a device sends
and the registrar's 200 OK on flows that a rule with a SIP option allowed, and
keeps the flow open while a registration made through it lasts: until the
latest granted expiry of every address-of-record registered through it, plus
``GRACE`` for the refresh to arrive. ``Expires: 0`` (or ``Contact: *``) ends a
registration at once.

Only what is needed is read: the start line, Call-ID, CSeq, To, Contact and
Expires (compact forms too), and Content-Length to cut messages out of a TCP
stream. A message that does not parse is counted and changes nothing: the flow
stays a plain flow.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEADERS = 8192  # bytes before the blank line; longer is not a message we read
MAX_PENDING = 16  # REGISTERs awaiting an answer, per flow
MAX_BINDINGS = 16  # addresses-of-record registered through one flow
DEFAULT_EXPIRES = 3600  # RFC 3261 10.2.1.1, when neither side says
GRACE = 32.0  # seconds a registration is held past its expiry, for the refresh to arrive
MODES = ("registrar", "any-proxy")  # who may call a registered contact
COMPACT = {"i": "call-id", "m": "contact", "l": "content-length", "t": "to"}
WANTED = frozenset({"call-id", "cseq", "contact", "content-length", "expires", "to"})


class SipError(ValueError):
    """Not a SIP message this module can read; the message says why."""


@dataclass(frozen=True, slots=True)
class Contact:
    host: str
    port: int
    expires: int | None  # the ``expires`` parameter


@dataclass(frozen=True, slots=True)
class Message:
    method: str  # the request's method; "" for a response
    status: int  # the response's status code; 0 for a request
    headers: dict[str, list[str]]  # the headers of WANTED, by lower-case full name
    length: int  # bytes of the whole message (headers and body) as far as it arrived

    def first(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def cseq(self) -> tuple[str, int, str]:
        """(Call-ID, CSeq number, CSeq method): what ties a response to its request."""
        call_id, cseq = self.first("call-id"), self.first("cseq")
        if call_id is None or cseq is None:
            raise SipError("no Call-ID or CSeq")
        number, _, method = cseq.partition(" ")
        if not number.isdigit() or not method.strip():
            raise SipError(f"CSeq {cseq!r} is not a number and a method")
        return call_id, int(number), method.strip().upper()

    @property
    def expires(self) -> int | None:
        value = self.first("expires")
        return None if value is None else seconds(value)

    def contacts(self) -> list[Contact] | None:
        """The Contact headers' addresses; None for ``Contact: *`` (remove every binding)."""
        found = []
        for value in self.headers.get("contact", []):
            for part in split_list(value):
                if part == "*":
                    return None
                found.append(parse_contact(part))
        return found

    def address_of_record(self) -> str:
        """The To header's URI, which names what is registered."""
        to = self.first("to")
        if to is None:
            raise SipError("no To header")
        uri, _ = uri_and_params(to)
        return uri.lower()


def seconds(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
        raise SipError(f"expires {text!r} is not a number of seconds")
    return int(text)


def parse(data: bytes | bytearray | memoryview) -> Message:
    """The start line and wanted headers of the message at the start of ``data``.

    ``data`` may end anywhere after the blank line that ends the headers (a first
    fragment, a TCP segment): the body is neither needed nor checked.
    """
    raw = bytes(data[: MAX_HEADERS + 4])
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise SipError("no end of headers" if len(raw) < MAX_HEADERS else "headers too long")
    try:
        text = raw[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("headers are not UTF-8") from None
    lines = text.split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) < 3:
        raise SipError(f"start line {lines[0][:60]!r} is not SIP")
    if start[0] == "SIP/2.0":
        if not (start[1].isdigit() and len(start[1]) == 3):
            raise SipError(f"status {start[1][:10]!r} is not a SIP status code")
        method, status = "", int(start[1])
    elif start[2] == "SIP/2.0" and start[0].isalpha() and start[0].isupper():
        method, status = start[0], 0
    else:
        raise SipError(f"start line {lines[0][:60]!r} is not SIP/2.0")
    headers: dict[str, list[str]] = {}
    name = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # folded: continues the previous header
            if name in headers:
                headers[name][-1] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise SipError(f"header line {line[:60]!r} has no colon")
        name = key.strip().lower()
        name = COMPACT.get(name, name)
        if name in WANTED:
            headers.setdefault(name, []).append(value.strip())
    body = headers.get("content-length", ["0"])[0]
    return Message(method, status, headers, end + 4 + seconds(body))


def split_list(value: str) -> list[str]:
    """A comma-separated header value, commas inside quotes and <> kept."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif char == "," and not quoted and depth <= 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def uri_and_params(value: str) -> tuple[str, dict[str, str]]:
    """A name-addr or addr-spec: its URI, and the header parameters after it."""
    if "<" in value:
        opened = value.index("<")
        closed = value.find(">", opened)
        if closed < 0:
            raise SipError(f"{value[:60]!r} has no closing >")
        uri, rest = value[opened + 1 : closed], value[closed + 1 :]
    else:
        uri, _, rest = value.partition(";")
        rest = ";" + rest
    params = {}
    for param in rest.split(";")[1:]:
        key, _, val = param.partition("=")
        params[key.strip().lower()] = val.strip()
    return uri.strip(), params


def parse_contact(value: str) -> Contact:
    uri, params = uri_and_params(value)
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise SipError(f"contact {uri[:60]!r} is not a sip: or sips: URI")
    hostport = rest.rpartition("@")[2]
    for stop in ";?":
        hostport = hostport.partition(stop)[0]
    if hostport.startswith("["):  # IPv6: the overlay carries IPv4, keep the text
        host, _, port_text = hostport[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise SipError(f"contact {uri[:60]!r} names no host")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise SipError(f"contact {uri[:60]!r} has port {port_text[:10]!r}")
    port = int(port_text) if port_text else (5061 if scheme == "sips" else 5060)
    expires = params.get("expires")
    return Contact(host.lower(), port, None if expires is None else seconds(expires))


def granted(request: Message, response: Message) -> int:
    """Seconds the registrar granted the REGISTER ``request`` in its 2xx ``response``; 0
    when it removed the bindings."""
    asked = request.contacts()
    if asked is None:
        return 0
    given = response.contacts()
    if not given:
        return 0  # RFC 3261 10.3: the 200 OK lists the bindings that remain
    ours = {(c.host, c.port) for c in asked}
    mine = [c for c in given if (c.host, c.port) in ours] or given
    for contact in mine:
        if contact.expires is not None:
            return contact.expires
    for expires in (response.expires, request.expires):
        if expires is not None:
            return expires
    return DEFAULT_EXPIRES


@dataclass(slots=True)
class Pending:
    request: Message
    address_of_record: str
    ports: frozenset[int]  # contact ports on the device's own address


@dataclass(slots=True)
class Binding:
    until: float
    ports: frozenset[int]


class Registrations:
    """The SIP registrations made through one flow, from its messages."""

    __slots__ = ("bindings", "device", "max_expires", "mode", "pending", "streams")

    def __init__(self, mode: str, device: str, max_expires: float) -> None:
        self.mode = mode  # MODES: who may call a registered contact
        self.device = device  # the device's overlay address, dotted
        self.max_expires = max_expires
        self.pending: dict[tuple[str, int], Pending] = {}
        self.bindings: dict[str, Binding] = {}
        self.streams = (Stream(), Stream())  # TCP: from the device, to the device

    def until(self, now: float) -> float:
        """When the last live registration ends (0.0: none holds the flow)."""
        return max((b.until for b in self.bindings.values() if b.until > now), default=0.0)

    def contact_ports(self, now: float) -> set[int]:
        """The device ports a live registration named as its contact."""
        return {p for b in self.bindings.values() if b.until > now for p in b.ports}

    def from_device(self, message: Message) -> str | None:
        """Note a REGISTER; return what to count, if anything."""
        if message.method != "REGISTER":
            return None
        call_id, number, _ = message.cseq
        contacts = message.contacts()
        ports = frozenset(c.port for c in contacts or () if c.host == self.device)
        while len(self.pending) >= MAX_PENDING:
            del self.pending[next(iter(self.pending))]
        self.pending[(call_id, number)] = Pending(message, message.address_of_record(), ports)
        if contacts and not ports:
            return "foreign-contact"  # the registrar must use the source address it saw
        return "register"

    def to_device(self, message: Message, now: float) -> str | None:
        """Note the final answer to a REGISTER; return what to count, if anything."""
        if message.status < 200:
            return None
        call_id, number, method = message.cseq
        if method != "REGISTER":
            return None
        pending = self.pending.pop((call_id, number), None)
        if pending is None or message.status >= 300:
            return None
        seconds = min(granted(pending.request, message), self.max_expires)
        if seconds <= 0:
            return "unregistered" if self.bindings.pop(pending.address_of_record, None) else None
        if pending.address_of_record not in self.bindings and len(self.bindings) >= MAX_BINDINGS:
            return "binding-limit"
        self.bindings[pending.address_of_record] = Binding(now + seconds + GRACE, pending.ports)
        return "registered"


class Stream:
    """SIP messages cut out of one direction of a TCP connection, in sequence order.

    Only headers are kept: a body is skipped as it arrives, so a stream holds at
    most ``MAX_HEADERS`` bytes whatever Content-Length claims.
    """

    __slots__ = ("buffer", "next_seq", "skip")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.next_seq: int | None = None
        self.skip = 0  # body bytes still to come

    def feed(self, seq: int, data: bytes | memoryview) -> tuple[list[Message], bool]:
        """Add a segment; return the messages it completed, and whether bytes were lost
        (a gap in the sequence, or bytes that do not parse: the rest is skipped)."""
        if not data:
            return [], False
        if self.next_seq is not None and seq != self.next_seq:
            if (self.next_seq - seq) % 2**32 < 2**31:
                return [], False  # a retransmission of what was read already
            self.buffer.clear()  # a gap: what is buffered can no longer be completed
            self.skip = 0
            self.next_seq = (seq + len(data)) % 2**32
            return [], True
        self.next_seq = (seq + len(data)) % 2**32
        skipped = min(self.skip, len(data))
        self.skip -= skipped
        self.buffer += data[skipped:]
        messages: list[Message] = []
        while True:
            stripped = len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))
            del self.buffer[:stripped]  # keep-alive CRLFs (RFC 5626)
            if not self.buffer:
                return messages, False
            try:
                message = parse(self.buffer)
            except SipError:
                if len(self.buffer) < MAX_HEADERS and b"\r\n\r\n" not in self.buffer:
                    return messages, False  # the rest of the headers is still to come
                self.buffer.clear()
                return messages, True
            messages.append(message)
            taken = min(message.length, len(self.buffer))
            del self.buffer[:taken]
            self.skip = message.length - taken
            if self.skip:
                return messages, False
