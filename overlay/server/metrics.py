"""Prometheus metrics, read from the server's status at scrape time.

Nothing is counted twice and nothing touches the hot path: the router and the
sessions keep plain integer counters, and a scrape turns the same
:meth:`Server.status` that ``overlay status`` shows into the exposition format
(prometheus-client). Counters include the sessions that have closed, so they
only ever grow.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from overlay.status import ServerStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusCollector(Collector):
    def __init__(self, status: ServerStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        data = self.status
        server, totals = data["server"], data["totals"]
        info = GaugeMetricFamily(
            "overlay_build_info",
            "The server's version and node name (the value is always 1).",
            labels=["version", "node"],
        )
        info.add_metric([server["version"], server["node"]], 1)
        yield info
        yield GaugeMetricFamily("overlay_sessions", "Open tunnels.", value=len(data["sessions"]))
        yield GaugeMetricFamily(
            "overlay_leases", "Leased overlay addresses.", value=server["leases"]
        )
        yield GaugeMetricFamily(
            "overlay_pool_addresses", "Addresses the pool can lease.", value=server["pool_size"]
        )
        yield GaugeMetricFamily(
            "overlay_pending_connections",
            "Connections that are not tunnels yet.",
            value=server["pending"],
        )
        yield GaugeMetricFamily(
            "overlay_enrolled_devices", "Devices in the registry.", value=server["enrolled"]
        )
        store = server["store"]
        yield GaugeMetricFamily(
            "overlay_store_up",
            f"Whether the last request to the store ({store['backend']}) succeeded.",
            value=int(store["up"]),
        )
        yield CounterMetricFamily(
            "overlay_store_lease_races",
            "New leases another node of the fleet won first (retried with another address).",
            value=store["races"],
        )
        yield CounterMetricFamily(
            "overlay_store_outages",
            "Times the store became unreachable (each logged once).",
            value=store["outages"],
        )
        yield CounterMetricFamily(
            "overlay_tunnels_taken_over",
            "Tunnels closed (4001) because their device opened a newer one on another node.",
            value=server["taken_over"],
        )
        workers = data.get("workers")
        if workers:
            restarts = CounterMetricFamily(
                "overlay_worker_restarts",
                "Times a worker process died and was started again (listen.workers).",
                labels=["worker"],
            )
            for worker in workers:
                restarts.add_metric([str(worker["number"])], worker["restarts"])
            yield restarts
        if "relay_dropped" in server:
            yield CounterMetricFamily(
                "overlay_relay_dropped",
                "Lines of the workers' relay (new tunnels, failed logins) the supervisor did "
                "not pass to a worker that had stopped reading.",
                value=server["relay_dropped"],
            )
        routes = server["routes"]
        if routes is not None:
            yield GaugeMetricFamily(
                "overlay_routes",
                "Kernel /32 routes of this node's tunnels (protocol 250).",
                value=routes["installed"],
            )
            errors = CounterMetricFamily(
                "overlay_route_errors", "Route changes the kernel refused.", labels=["op"]
            )
            for op, count in sorted(routes["errors"].items()):
                errors.add_metric([op], count)
            yield errors
        bird = server["bird"]
        if bird is not None and bird["up"] is not None:
            yield GaugeMetricFamily(
                "overlay_bgp_daemon_up",
                "Whether BIRD answers on its control socket (0: the tunnels are not announced).",
                value=int(bird["up"]),
            )
        lan = server["lan"]
        if lan is not None and lan["prefix"] is not None:
            addresses = GaugeMetricFamily(
                "overlay_lan_address_info",
                "Each open tunnel's routable address on the management LAN (always 1).",
                labels=["device", "vrf", "address", "lan_address"],
            )
            for s in data["sessions"]:
                labels = [s["device"], s["vrf"], s["address"], s["lan_address"] or ""]
                addresses.add_metric(labels, 1)
            yield addresses
        handshakes = CounterMetricFamily(
            "overlay_handshakes", "Tunnels opened.", value=server["handshakes"]
        )
        yield handshakes
        refusals = CounterMetricFamily(
            "overlay_refusals", "Connections and requests refused.", labels=["reason"]
        )
        for reason, count in sorted(data["refusals"].items()):
            refusals.add_metric([reason], count)
        yield refusals
        drops = CounterMetricFamily(
            "overlay_drops", "Packets or frames dropped.", labels=["reason"]
        )
        for reason, count in sorted(data["drops"].items()):
            drops.add_metric([reason], count)
        yield drops
        for unit, rx, tx in (
            ("bytes", totals["rx_bytes"], totals["tx_bytes"]),
            ("packets", totals["rx_packets"], totals["tx_packets"]),
            ("frames", totals["rx_frames"], totals["tx_frames"]),
        ):
            family = CounterMetricFamily(
                f"overlay_tunnel_{unit}",
                f"Tunnel {unit}: rx arrived from devices, tx sent to them.",
                labels=["direction"],
            )
            family.add_metric(["rx"], rx)
            family.add_metric(["tx"], tx)
            yield family
        firewall = data["firewall"]
        yield GaugeMetricFamily(
            "overlay_flows", "Flows in the firewall's tables.", value=firewall["flows"]
        )
        yield CounterMetricFamily(
            "overlay_flows_opened", "Flows the firewall let open.", value=firewall["opened"]
        )
        hits = CounterMetricFamily(
            "overlay_firewall_rule_hits",
            "New flows each rule decided; rule=default: denied by no rule.",
            labels=["rule", "action"],
        )
        for number, action, count in firewall["hits"]:
            hits.add_metric([str(number), action], count)
        hits.add_metric(["default", "deny"], firewall["unmatched"])
        yield hits
        yield GaugeMetricFamily(
            "overlay_sip_held_flows",
            "Flows a SIP registration holds open.",
            value=firewall["sip_held"],
        )
        sip = CounterMetricFamily(
            "overlay_sip_messages",
            "SIP messages read on flows of rules with a SIP option, by what they did.",
            labels=["result"],
        )
        for result, count in sorted(firewall["sip"].items()):
            sip.add_metric([result], count)
        yield sip
        qoe = CounterMetricFamily("overlay_qoe_reports", "QoE report lines.", labels=["result"])
        for result, count in sorted((data["qoe"] or {}).items()):
            qoe.add_metric([result], count)
        yield qoe
        certificate = data["certificate"]
        if certificate is not None:
            yield GaugeMetricFamily(
                "overlay_certificate_expiry_seconds",
                "Seconds until the server's certificate in use expires (warned under 30 days).",
                value=certificate["expires_in"],
            )
            reloads = CounterMetricFamily(
                "overlay_certificate_reloads",
                "Certificate reloads (SIGHUP, overlay reload, the admin API) by result.",
                labels=["result"],
            )
            reloads.add_metric(["ok"], certificate["reloads"])
            reloads.add_metric(["refused"], certificate["failed_reloads"])
            yield reloads


def exposition(status: ServerStatus) -> bytes:
    """The metrics of ``status`` in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)
