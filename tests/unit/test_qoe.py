import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.exceptions import InputError
from appliance.qoe import read_reports
from overlay.exceptions import StoreError
from overlay.server.qoe import MAX_REPORT, ReportError, ReportStore, parse_report


def test_parse_report():
    assert parse_report(b'{"mos": 4.2}\n') == {"mos": 4.2}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1, 2]", "JSON object"),
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"{" + b" " * MAX_REPORT + b"}", "longer than"),
    ],
)
def test_bad_reports(line, message):
    with pytest.raises(ReportError, match=message):
        parse_report(line)


@given(st.binary(max_size=300))
def test_any_line_parses_or_raises_report_error(line):
    with contextlib.suppress(ReportError):
        assert isinstance(parse_report(line), dict)


def test_store_lists_by_device_newest_last(tmp_path):
    store = ReportStore(tmp_path / "qoe.sqlite")
    store.add_many(
        [
            (1.0, "SN-1", "main-vrf", "169.254.1.1", '{"n":1}'),
            (2.0, "SN-2", "main-vrf", "169.254.1.2", '{"n":2}'),
            (3.0, "SN-1", "main-vrf", "169.254.1.1", '{"n":3}'),
        ]
    )
    assert [r.report["n"] for r in store.list()] == [1, 2, 3]
    assert [r.report["n"] for r in store.list(device="SN-1")] == [1, 3]
    assert [r.report["n"] for r in store.list(limit=1)] == [3]
    store.close()
    readonly = ReportStore(tmp_path / "qoe.sqlite", readonly=True)
    assert readonly.list(device="SN-2")[0].address == str(ipaddress.IPv4Address("169.254.1.2"))


def test_readonly_store_that_is_missing(tmp_path):
    with pytest.raises(StoreError, match="cannot open QoE store"):
        ReportStore(tmp_path / "none.sqlite", readonly=True)


def test_device_reads_reports_line_by_line():
    assert read_reports('{"a": 1}\n\n{"b": 2}\n') == [b'{"a":1}', b'{"b":2}']
    with pytest.raises(InputError, match="line 2 is not JSON"):
        read_reports('{"a": 1}\n{oops\n')
    with pytest.raises(InputError, match="line 1 is not a JSON object"):
        read_reports("[1]\n")
    with pytest.raises(InputError, match="no report"):
        read_reports("\n")
