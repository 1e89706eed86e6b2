"""``scripts/bench``: measure the overlay in network namespaces of its own (``ovlb-*``).

    scripts/bench [--part paths|reconnect|agent|reach|fairness]…
                  [--devices N] [--quick] [--json FILE]
                  [--path direct|overlay|openvpn-tcp]… [--mtu N] [--codel T,I]
                  [--chart PNG] [--profile DIR]

Part ``paths``: between the same two namespaces joined by a veth, the direct
path, our overlay and OpenVPN 2.6 in TCP mode (AES-256-GCM, tcp-nodelay,
txqueuelen 1000, no DCO), each measured the same way: iperf3 TCP throughput
both ways, idle ping RTT, ping RTT while iperf3 (cubic) fills a 200 Mbit TBF
bottleneck on both underlay ends (median RTTs), and server CPU seconds per
Gbit carried. ``--mtu`` and ``--codel`` add overlay rows with those settings;
``--profile`` samples the overlay's server and device with py-spy while iperf3
runs each way; ``--chart`` draws the table.

Part ``reconnect`` (the resilience load check): N simulated devices
(``lab.loadgen``, protocol v1 without a TUN each) connect to one server; then
the server is restarted twice, gracefully (SIGTERM: devices hear 1001 and come
back at once) and by SIGKILL (no close frame: devices back off with jitter),
and the time until every device is back with its old address is measured. It
also reads the server's RSS per idle tunnel, the new tunnels per second and
the server's CPU time per new tunnel.

Part ``agent``: the device agent alone (lab/bench/agent.py): RSS and threads idle
with one and two VRFs, start to tunnel up, CPU and wake-ups while idle, and the
memory of each piece it imports.

Part ``reach`` (lab/bench/reach.py): the lab with two nodes, FRR and the NMS
(the lab's own ``ovl-*`` namespaces: it refuses to run while a lab is up).
Throughput and RTT from the NMS through the router against from the node;
how fast BIRD and FRR take N routes; after a SIGKILL of the node holding the
lab's devices, how long until the NMS reaches each again at its LAN address;
and with N load-generator devices, how long until the router has all of their
routes on the surviving node.

Part ``fairness`` (lab/bench/fairness.py): the lab with one device; SNMP
response times (a get every 0.2 s from the server's side) and chrony's offset,
with the tunnel idle and while the device downloads a 100 MB file from the
server again and again.

Numbers are printed as a table and written as JSON; nothing is asserted. Only
addresses inside the bench's own namespaces are used.
"""
