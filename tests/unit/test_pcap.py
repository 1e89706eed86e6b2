from overlay import pcap
from tests.packets import ipv4


def test_round_trip():
    packets = [ipv4("169.254.1.1", "169.254.0.1", payload=b"x" * n) for n in (0, 10, 1000)]
    data = pcap.file_header() + b"".join(
        pcap.record(1700000000.25 + n, p) for n, p in enumerate(packets)
    )
    read = pcap.read(data)
    assert [p for _, p in read] == packets
    assert read[0][0] == 1700000000.25


def test_snaplen_cuts_but_keeps_the_original_length():
    packet = ipv4("169.254.1.1", "169.254.0.1", payload=b"y" * 500)
    rec = pcap.record(0, packet, snaplen=100)
    assert len(rec) == 16 + 100
    assert int.from_bytes(rec[12:16], "little") == len(packet)
