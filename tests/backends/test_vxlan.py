"""VXLAN backend: options, device create/adopt, stable MAC (fake kernel, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from flannelish.backends import get_backend_class
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.vxlan import VxlanBackend, VxlanOptions

from flannelish.errors import ConfigError
from flannelish.kernel.netlink import Addr, VxlanSpec
from flannelish.subnet.lease import Lease
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit

NET = SimpleNamespace(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})


def make(
    tmp_path: Path, backend: dict | None = None, mtu: int = 1500, nl: FakeNetlink | None = None
):
    nl = nl or FakeNetlink()
    eth0 = nl.link("eth0") or nl.add_link("eth0", mtu=mtu)
    ext = ExternalInterface(
        "eth0", eth0.index, IPv4Address("198.18.0.1"), IPv4Address("198.18.0.1"), mtu
    )
    net = SimpleNamespace(network=NET.network, backend=backend or {"Type": "vxlan"})
    return nl, VxlanBackend(BackendContext(nl, ext, net, tmp_path))


def test_registry_resolves_vxlan_case_insensitively():
    assert get_backend_class("VXLAN") is VxlanBackend


def test_options_follow_flannel_defaults_and_case_insensitive_keys():
    assert VxlanOptions.parse({"Type": "vxlan"}) == VxlanOptions(vni=1, port=0)
    opts = VxlanOptions.parse({"vni": 4, "PORT": 4789, "mtu": 1400})
    assert (opts.vni, opts.port, opts.mtu) == (4, 4789, 1400)


@pytest.mark.parametrize(
    ("raw", "field"),
    [({"VNI": "1"}, "VNI"), ({"VNI": -1}, "VNI"), ({"Port": 70000}, "Port"),
     ({"GBP": "yes"}, "GBP"), ({"MTU": 100}, "MTU"), ({"VNI": True}, "VNI")],
)  # fmt: skip
def test_bad_option_names_the_field(raw, field):
    with pytest.raises(ConfigError) as err:
        VxlanOptions.parse(raw)
    assert f"Backend.{field}" in str(err.value)


def test_setup_creates_device_with_flannel_attributes(tmp_path):
    nl, be = make(tmp_path, {"Type": "vxlan", "VNI": 7})
    be.setup()
    link = nl.link("flannel.7")
    assert link is not None and link.mtu == 1450 and link.mac == be.mac
    assert link.vxlan.vni == 7 and link.vxlan.port == 8472 and not link.vxlan.learning
    assert str(link.vxlan.local) == "198.18.0.1" and link.vxlan.link == nl.link("eth0").index
    assert be.lease_attrs().to_json() == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":7,"VtepMAC":"{be.mac}"}}}}'
    )


def test_backend_mtu_option_and_underlay_mtu_both_minus_50(tmp_path):
    assert make(tmp_path, mtu=9001)[1].mtu == 8951
    assert make(tmp_path, {"Type": "vxlan", "MTU": 1400})[1].mtu == 1350


def test_mac_survives_restart_via_state_file(tmp_path):
    nl, first = make(tmp_path)
    first.setup()
    nl.delete_link(nl.link("flannel.1").index)  # e.g. a reboot wiped the device
    _, second = make(tmp_path, nl=nl)
    second.setup()
    assert second.mac == first.mac and nl.link("flannel.1").mac == first.mac


def test_existing_compatible_device_is_adopted_with_its_mac_and_gets_the_new_mtu(tmp_path):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0")
    nl.create_vxlan(VxlanSpec("flannel.1", 1, IPv4Address("198.18.0.1"), eth0.index, 8472,
                              "0e:11:22:33:44:55", 1400))  # fmt: skip
    nl.calls.clear()
    _, be = make(tmp_path, nl=nl)
    be.setup()
    assert be.mac == "0e:11:22:33:44:55"
    assert [op for op, _ in nl.calls] == ["set_link"]
    assert nl.link("flannel.1").mtu == 1450
    assert (tmp_path / "flannel.1.vtep-mac").read_text().strip() == "0e:11:22:33:44:55"


def test_incompatible_device_is_replaced_keeping_our_stored_mac(tmp_path):
    (tmp_path / "flannel.1.vtep-mac").write_text("0e:00:00:00:aa:bb\n")
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0")
    nl.create_vxlan(VxlanSpec("flannel.1", 1, IPv4Address("198.18.0.1"), eth0.index, 4789,
                              "0e:99:99:99:99:99", 1450))  # fmt: skip
    _, be = make(tmp_path, nl=nl)
    be.setup()
    link = nl.link("flannel.1")
    assert link.vxlan.port == 8472 and link.mac == "0e:00:00:00:aa:bb"


def test_bind_lease_sets_subnet_dot_zero_slash_32_and_drops_other_overlay_addresses(tmp_path):
    nl, be = make(tmp_path)
    be.setup()
    nl.add_addr(Addr(be.index, IPv4Address("10.244.9.0"), 32))  # left from an old lease
    be.bind_lease(Lease(IPv4Network("10.244.5.0/24"), be.lease_attrs()))
    assert [str(a.address) for a in nl.addrs(be.index)] == ["10.244.5.0"]
    assert nl.link("flannel.1").up


def test_too_small_underlay_mtu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="MTU"):
        make(tmp_path, mtu=100)
