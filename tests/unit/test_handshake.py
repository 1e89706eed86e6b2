import base64

import pytest
from multidict import CIMultiDict

from overlay.server.handshake import (
    Refusal,
    TunnelRequest,
    check_request,
    parse_basic,
    switching_protocols,
)


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455, section 1.3
GOOD = {
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Protocol": "ovl.v1",
    "X-Ovl-Device": "SN-0001",
    "X-Ovl-Vrf": "main-vrf",
    "Authorization": basic("VPN", "pa:ss"),
}


def check(**changes):
    headers = CIMultiDict({k: v for k, v in (GOOD | changes).items() if v is not None})
    return check_request(headers)


def test_good_request():
    assert check() == TunnelRequest("SN-0001", "main-vrf", "VPN", "pa:ss", key=KEY)


def test_headers_are_case_insensitive_and_vrf_defaults():
    headers = CIMultiDict({k.lower(): v for k, v in GOOD.items() if k != "X-Ovl-Vrf"})
    assert check_request(headers) == TunnelRequest("SN-0001", "default", "VPN", "pa:ss", key=KEY)


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"Upgrade": None}, 400, "not-websocket"),
        ({"Connection": "keep-alive"}, 400, "bad-websocket"),
        ({"Sec-WebSocket-Version": "8"}, 400, "bad-websocket"),
        ({"Sec-WebSocket-Key": None}, 400, "bad-websocket"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "bad-websocket"),
        ({"Sec-WebSocket-Key": "not base64 at all!!!!!!!"}, 400, "bad-websocket"),
        ({"Sec-WebSocket-Protocol": None}, 400, "no-subprotocol"),
        ({"Sec-WebSocket-Protocol": "ovl.v2"}, 426, "version"),
        ({"X-Ovl-Device": None}, 400, "bad-device"),
        ({"X-Ovl-Device": "../etc"}, 400, "bad-device"),
        ({"X-Ovl-Device": "x" * 65}, 400, "bad-device"),
        ({"X-Ovl-Vrf": "a b"}, 400, "bad-vrf"),
        ({"Authorization": None}, 401, "no-credentials"),
        ({"Authorization": "Bearer abc"}, 401, "no-credentials"),
        ({"Authorization": "Basic !!!"}, 401, "no-credentials"),
    ],
)
def test_refusals(changes, status, reason):
    refusal = check(**changes)
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.reason) == (status, reason)


def test_parse_basic():
    assert parse_basic(basic("u", "")) == ("u", "")
    assert parse_basic("Basic " + base64.b64encode(b"nocolon").decode()) is None
    assert parse_basic("Basic " + base64.b64encode(b":pw").decode()) is None


def test_the_101_accepts_the_key_as_rfc_6455_says():
    head = switching_protocols(KEY, {"X-Frame-Options": "DENY"}).decode()
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert head.endswith("\r\n\r\n")
    lines = head.split("\r\n")
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in lines  # the RFC's example
    assert "Sec-WebSocket-Protocol: ovl.v1" in lines
    assert "X-Frame-Options: DENY" in lines
