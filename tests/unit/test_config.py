"""Config files: the shipped examples, and errors that name the file and the key."""

import re
import shutil

import pytest

from appliance.config import EXAMPLE as APPLIANCE_EXAMPLE
from appliance.config import load_appliance_config
from appliance.hooks import Hooks
from overlay.exceptions import ConfigError
from overlay.server.auth import hash_password
from overlay.server.config import EXAMPLE as SERVER_EXAMPLE
from overlay.server.config import load_server_config
from overlay.server.workers import worker_config

HASH = hash_password("s3cret-pass", log_n=10)


@pytest.fixture
def server_toml(tmp_path):
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_text("x")
    text = SERVER_EXAMPLE.read_text().replace(
        'password_hash = "REPLACE-ME: run overlay hash-password"', f'password_hash = "{HASH}"'
    )
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


@pytest.fixture
def appliance_toml(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "password").write_text("s3cret-pass\n")
    path = tmp_path / "appliance.toml"
    shutil.copy(APPLIANCE_EXAMPLE, path)
    return path


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_server_example_loads_once_the_hash_is_set(server_toml):
    config = load_server_config(server_toml)
    assert (config.port, config.path, config.mtu, config.ping_interval) == (443, "/tun", 1400, 60)
    assert str(config.pool.first) == "169.254.1.0"


def test_the_node_is_named_by_the_host_unless_the_config_says(server_toml, monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "overlay-2.example.net")
    assert load_server_config(server_toml).node == "overlay-2"
    edit(server_toml, "[node]", '[node]\nname = "fra-1"')
    assert load_server_config(server_toml).node == "fra-1"


def test_shipped_server_example_has_no_working_password():
    with pytest.raises(ConfigError, match=r"auth\.password_hash: password hash is not"):
        load_server_config(SERVER_EXAMPLE)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 443", 'port = "443"', "listen.port: must be a whole number"),
        ("port = 443", "port = 70000", "listen.port"),
        ('cert_file = "server.pem"', 'cert_file = "nope.pem"', "listen.cert_file: file .*nope.pem"),
        ("mtu = 1400", "mtu = 100", "overlay.mtu"),
        (
            "max_message = 262144",
            "max_message = 100000",
            "overlay.max_message: 100000 is too small for offload .* at least 131090",
        ),
        ("queue_bytes = 262144", "queue_bytes = 65536", "overlay.queue_bytes: .* for offload"),
        ("queue_target = 0.005", "queue_target = 0", "overlay.queue_target"),
        ('pool = "169.254.1.0-169.254.255.254"', 'pool = "10.0.0.0/8"', "overlay.pool"),
        ('username = "VPN"', 'usrname = "VPN"', "auth.usrname: unknown key"),
        ("[log]", "[log]\nlevl = 1", "log.levl: unknown key"),
        ('level = "info"', 'level = "loud"', "log.level: must be one of"),
        ("[listen]", "[listen\n", "not valid TOML"),
        ("[node]", '[node]\nname = "two words"', "node.name: 'two words' is not a node name"),
        ("# workers = 2", "workers = 65", "listen.workers"),
    ],
)
def test_server_config_errors_name_the_key(server_toml, old, new, message):
    edit(server_toml, old, new)
    with pytest.raises(ConfigError, match=message) as info:
        load_server_config(server_toml)
    assert str(server_toml) in str(info.value)
    assert "\n" not in str(info.value)


FLEET_STORE = '# url = "sqlite:"', 'url = "postgresql://overlay@db.test/overlay"'


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_workers_get_their_own_tun_node_and_control_socket(server_toml, store):
    edit(server_toml, "# workers = 2", "workers = 2")
    if store == "postgresql":
        edit(server_toml, *FLEET_STORE)
    config = load_server_config(server_toml)
    assert (config.workers, config.worker, config.control_socket.name) == (2, 0, "control.sock")
    second = worker_config(config, 2)
    assert (second.tun_name, second.node, second.admin) == ("ovl0w2", f"{config.node}-w2", None)
    assert second.control_socket == config.state_dir / "worker-2.sock"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("routes = true", "routes = false", "overlay.routes: must be true with listen.workers"),
        ('tun_name = "ovl0"', 'tun_name = "overlay-tun-0a"', "overlay.tun_name: .* at most 13"),
    ],
)
def test_what_workers_cannot_share_is_refused(server_toml, old, new, message):
    edit(server_toml, "# workers = 2", "workers = 2")
    edit(server_toml, *FLEET_STORE)
    edit(server_toml, old, new)
    with pytest.raises(ConfigError, match=message):
        load_server_config(server_toml)


def test_codel_defaults_are_what_the_examples_and_docs_say(server_toml, appliance_toml):
    """5 ms / 100 ms (RFC 8289) when the keys are absent, as example.toml states them."""
    edit(server_toml, "queue_target = 0.005", "")
    edit(server_toml, "queue_interval = 0.1 ", "# ")
    edit(appliance_toml, "queue_target = 0.005", "")
    edit(appliance_toml, "queue_interval = 0.1 ", "# ")
    server, device = load_server_config(server_toml), load_appliance_config(appliance_toml)
    assert (server.queue_target, server.queue_interval) == (0.005, 0.1)
    assert (device.queue_target, device.queue_interval) == (0.005, 0.1)


def test_without_offload_smaller_queues_are_fine(server_toml, appliance_toml):
    edit(server_toml, "offload = true", "offload = false")
    edit(server_toml, "queue_bytes = 262144", "queue_bytes = 65536")
    assert load_server_config(server_toml).queue_bytes == 65536
    edit(appliance_toml, "offload = true", "offload = false")
    edit(appliance_toml, "queue_bytes = 262144", "queue_bytes = 16384")
    assert load_appliance_config(appliance_toml).queue_bytes == 16384


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_server_config(tmp_path / "none.toml")


def test_appliance_example_loads(appliance_toml):
    config = load_appliance_config(appliance_toml)
    (vrf,) = config.vrfs
    assert vrf.urls == ("wss://overlay.example.net:443/tun",)
    assert vrf.password == "s3cret-pass"
    assert (vrf.name, vrf.backend, vrf.tun_name) == ("main-vrf", "default", "ovl0")
    assert (config.min_delay, config.max_delay) == (1.0, 60.0)
    assert config.tun_queue_length == 64


VRFS = """
[[vrf]]
name = "mgmt"
backend = "netns"

[[vrf]]
name = "voice"
backend = "netns"
netns = "ns-voice"
urls = ["wss://voice.example.net/tun"]
password = "voice-pass"

[[vrf]]
name = "cust"

[[vrf]]
name = "cust2"
backend = "vrf"
device = "vrf-cust"
"""


def drop_device_vrf(path):
    path.write_text(re.sub(r'(?m)^vrf = "main-vrf".*\n', "", path.read_text()))


def test_vrf_tables(appliance_toml):
    drop_device_vrf(appliance_toml)
    appliance_toml.write_text(appliance_toml.read_text() + VRFS)
    mgmt, voice, cust, cust2 = load_appliance_config(appliance_toml).vrfs
    assert (mgmt.backend, mgmt.netns, mgmt.tun_name, mgmt.own_servers) == (
        "netns",
        "mgmt",
        "ovl0",
        False,
    )
    assert mgmt.urls == ("wss://overlay.example.net:443/tun",)  # from [server]
    assert (voice.netns, voice.urls, voice.password) == (
        "ns-voice",
        ("wss://voice.example.net/tun",),
        "voice-pass",
    )
    assert voice.own_servers
    assert (cust.backend, cust.tun_name) == ("default", "ovl0")
    assert (cust2.backend, cust2.device, cust2.tun_name) == ("vrf", "vrf-cust", "ovl1")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[vrf]]\nname = "a"\n[[vrf]]\nname = "a"\n', r"vrf\[1\]\.name: VRF 'a' is given twice"),
        ('[[vrf]]\nname = "a"\ntun = "x"\n[[vrf]]\nname = "b"\ntun = "x"\n', r"vrf\[1\]\.tun"),
        ('[[vrf]]\nname = "a"\nbackend = "vlan"\n', r"vrf\[0\]\.backend: must be one of"),
        ('[[vrf]]\nname = "a"\ncolour = "red"\n', r"vrf\[0\]\.colour: unknown key"),
        ('[[vrf]]\nname = "a"\nsource = "nope"\n', r"vrf\[0\]\.source"),
    ],
)
def test_vrf_errors(appliance_toml, extra, message):
    drop_device_vrf(appliance_toml)
    appliance_toml.write_text(appliance_toml.read_text() + extra)
    with pytest.raises(ConfigError, match=message):
        load_appliance_config(appliance_toml)


def test_device_vrf_and_vrf_tables_together(appliance_toml):
    appliance_toml.write_text(appliance_toml.read_text() + '[[vrf]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"device\.vrf: give the VRFs as"):
        load_appliance_config(appliance_toml)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'urls = ["wss://overlay.example.net:443/tun"]',
            'urls = ["https://x/tun"]',
            "server.urls: .*must start with wss://",
        ),
        ('urls = ["wss://overlay.example.net:443/tun"]', "urls = []", "server.urls: give 1 to 9"),
        (
            'urls = ["wss://overlay.example.net:443/tun"]',
            "urls = [" + ", ".join(f'"wss://s{n}/tun"' for n in range(10)) + "]",
            "give 1 to 9",
        ),
        ('id = "SN-0001"', 'id = "bad id"', "device.id"),
        ('password_file = "password"', "", "server.password_file: is required"),
        ('password_file = "password"', 'password_file = "missing"', "server.password_file: file"),
        ('password_file = "password"', 'password_file = "password"\npassword = "x"', "not both"),
        ('name = "ovl0"', 'name = "a-very-long-tun-name"', "tun.name"),
        ("queue_length = 64", "queue_length = 0", "tun.queue_length: must be .* from 8"),
        ("queue_bytes = 262144", "queue_bytes = 65536", "tun.queue_bytes: .* for offload"),
        ("queue_interval = 0.1", "queue_interval = -1", "tun.queue_interval"),
        ("max_delay = 60", "max_delay = 0.5", "reconnect.max_delay"),
    ],
)
def test_appliance_config_errors_name_the_key(appliance_toml, old, new, message):
    edit(appliance_toml, old, new)
    with pytest.raises(ConfigError, match=message):
        load_appliance_config(appliance_toml)


def live_sample_rule(path):
    """Uncomment the example's sample to-device rule (shipped commented out)."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        inside = inside or line == "# [[firewall.rule]]"
        if inside and not line.startswith(("# destinations", "# sip")):
            line = line.removeprefix("# ")
        inside = inside and not line.startswith("comment")
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def test_the_example_allows_nothing_beyond_its_profile(server_toml):
    assert load_server_config(server_toml).firewall.rules == [
        {"number": 10, "profile": "ovoc-management"}
    ]


def test_server_example_firewall_rules_are_numbered_in_order(server_toml):
    live_sample_rule(server_toml)
    firewall = load_server_config(server_toml).firewall
    assert [r["number"] for r in firewall.rules] == [10, 20]
    assert firewall.rules[1]["sources"] == ["192.0.2.0/24"]
    assert firewall.limits.max_flows == 1024 and firewall.limits.udp == 120
    assert {"ovoc-management", "cisco-uc"} <= set(firewall.profiles)


def test_without_rules_the_default_is_the_ovoc_profile(server_toml):
    text = server_toml.read_text()
    server_toml.write_text(
        text[: text.index("\n[[firewall.rule]]\n")] + "\n" + text[text.index("\n[state]") :]
    )
    assert load_server_config(server_toml).firewall.rules == [
        {"number": 10, "profile": "ovoc-management"}
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('ports = "8443"', "ports = 8443", None),
        ('ports = "8443"', 'ports = "84-43"', r"firewall\.rule\[1\]: ports '84-43'"),
        ('protocol = "tcp"', 'protocol = "sctp"', r"firewall\.rule\[1\]: protocol 'sctp'"),
        ('comment = "device', 'remark = "device', r"firewall\.rule\[1\]\.remark: unknown key"),
        ('profile = "ovoc-management"', 'profile = "ovoc"', r"firewall\.rule\[0\]: no profile"),
        ("max_flows = 1024", "max_flows = 0", r"firewall\.max_flows"),
        ("# profiles_dir = ", "profiles_dir = ", r"firewall\.profiles_dir: .*does not exist"),
    ],
)
def test_firewall_errors_name_the_rule(server_toml, old, new, message):
    live_sample_rule(server_toml)
    edit(server_toml, old, new)
    if message is None:
        assert load_server_config(server_toml).firewall.rules[1]["ports"] == "8443"
        return
    with pytest.raises(ConfigError, match=message):
        load_server_config(server_toml)


def test_operator_profiles_join_the_built_in_ones(server_toml, tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "lab-echo.toml").write_text(
        'description = "echo"\n[[entry]]\ndirection = "to-device"\nprotocol = "tcp"\nports = "7"\n'
    )
    edit(server_toml, '# profiles_dir = "/etc/overlay/profiles"', 'profiles_dir = "profiles"')
    assert "lab-echo" in load_server_config(server_toml).firewall.profiles
    (profiles / "cisco-uc.toml").write_text((profiles / "lab-echo.toml").read_text())
    with pytest.raises(ConfigError, match="built-in profile is named 'cisco-uc'"):
        load_server_config(server_toml)
    (profiles / "cisco-uc.toml").unlink()
    (profiles / "broken.toml").write_text('[[entry]]\ndirection = "up"\nprotocol = "tcp"\n')
    with pytest.raises(ConfigError, match=r"broken.toml: entry\[0\]: direction 'up'"):
        load_server_config(server_toml)


def test_hooks_are_command_lines_of_absolute_programs(appliance_toml):
    appliance_toml.write_text(
        appliance_toml.read_text()
        + "\n[hooks]\nup = \"/usr/local/sbin/follow 'overlay up' --quiet\"\ntimeout = 5\n"
    )
    hooks = load_appliance_config(appliance_toml).hooks
    assert hooks == Hooks(("/usr/local/sbin/follow", "overlay up", "--quiet"), (), 5.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('up = "follow --quiet"', r"hooks\.up: 'follow --quiet' must start with an absolute path"),
        ('down = "/bin/x \'open"', r"hooks\.down: cannot split"),
    ],
)
def test_bad_hooks_are_named(appliance_toml, line, message):
    appliance_toml.write_text(appliance_toml.read_text() + f"\n[hooks]\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_appliance_config(appliance_toml)
