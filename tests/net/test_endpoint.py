"""Which address a miner publishes (prism.net.endpoint), with the outward-interface probe injected."""

from __future__ import annotations

import socket

import pytest

from prism.chain.base import AxonInfo, canonical_ip
from prism.errors import OperatorError
from prism.net.endpoint import outward_interface_ip, resolve_published_ip


def probe_returning(addresses: dict[socket.AddressFamily, str | None]):
    return lambda family: addresses.get(family)


def test_external_ip_wins_and_is_canonical() -> None:
    assert resolve_published_ip("0.0.0.0", "2001:0DB8:0:0::7", real_chain=True) == "2001:db8::7"
    assert resolve_published_ip("0.0.0.0", "::ffff:1.2.3.4", real_chain=True) == "1.2.3.4"
    with pytest.raises(OperatorError) as bad:
        resolve_published_ip("0.0.0.0", "miner.example.org", real_chain=True)
    assert bad.value.code == "config.invalid"


def test_a_concrete_bind_address_is_published() -> None:
    assert resolve_published_ip("1.2.3.4", None, real_chain=True) == "1.2.3.4"
    assert resolve_published_ip("::1", None, real_chain=False) == "::1"


def test_a_wildcard_bind_uses_loopback_locally_and_detection_on_a_real_chain() -> None:
    assert resolve_published_ip("0.0.0.0", None, real_chain=False) == "127.0.0.1"
    public = probe_returning({socket.AF_INET: "1.2.3.4"})
    assert resolve_published_ip("0.0.0.0", None, real_chain=True, probe=public) == "1.2.3.4"
    both = probe_returning({socket.AF_INET6: "2606:4700::1111", socket.AF_INET: "10.0.0.5"})
    assert resolve_published_ip("::", None, real_chain=True, probe=both) == "2606:4700::1111"


@pytest.mark.parametrize("found", ["10.0.0.5", "192.168.1.20", None])
def test_behind_nat_or_offline_the_operator_must_say(found: str | None) -> None:
    with pytest.raises(OperatorError) as info:
        resolve_published_ip("0.0.0.0", None, real_chain=True, probe=probe_returning({socket.AF_INET: found}))
    assert info.value.code == "config.invalid" and "--axon.external_ip" in info.value.message


def test_the_probe_reports_a_local_address_or_nothing() -> None:
    found = outward_interface_ip(socket.AF_INET)  # a UDP connect: no packet leaves the machine
    assert found is None or canonical_ip(found) == found


def test_endpoints_compare_as_addresses() -> None:
    axon = AxonInfo(ip="2001:0db8:0000:0000:0000:0000:0000:0001", port=9000)
    assert (
        axon.ip == "2001:db8::1" and axon.matches("2001:db8::1", 9000) and axon.matches("[2001:db8::1]", 9000)
    )
    assert not axon.matches("2001:db8::2", 9000) and not axon.matches("2001:db8::1", 9001)
    assert not axon.matches("not-an-ip", 9000)
    assert AxonInfo(ip="::ffff:10.0.0.2", port=1) == AxonInfo(ip="10.0.0.2", port=1)
