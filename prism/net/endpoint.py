"""Which address a miner publishes on chain for its axon.

* ``--axon.external_ip`` (with ``--axon.external_port``) wins: behind NAT, a load balancer or a
  port forward only the operator knows the address validators can reach.
* Otherwise a concrete ``--axon.ip`` (the bind address) is published.
* A wildcard bind (``0.0.0.0`` / ``::``) on the embedded chain publishes loopback. On a real
  chain the address of the interface that routes outwards is detected (a UDP ``connect`` to a
  documentation address, which sends no packet) and published when it is a public address; a
  private one (the machine is behind NAT) or none is an operator error asking for
  ``--axon.external_ip``. Detection never contacts a third-party service.

Addresses are compared and stored in one canonical text form (``prism.chain.base.canonical_ip``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

from prism.chain.base import canonical_ip
from prism.errors import OperatorError

logger = logging.getLogger(__name__)

# Documentation addresses (RFC 5737 / RFC 3849): a UDP connect picks the outward route, no packet leaves.
_PROBE_TARGETS = {socket.AF_INET: ("192.0.2.1", 9), socket.AF_INET6: ("2001:db8::1", 9)}

Probe = Callable[[socket.AddressFamily], str | None]


def outward_interface_ip(family: socket.AddressFamily) -> str | None:
    """The local address of the interface that routes to the internet, or None without a route."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(_PROBE_TARGETS[family])
            return str(probe.getsockname()[0])
        except OSError:
            return None


def _checked(ip: str, flag: str) -> str:
    try:
        return canonical_ip(ip)
    except ValueError as exc:
        raise OperatorError(f"{flag} {ip!r} is not an IP address", code="config.invalid") from exc


def _warn_if_private(ip: str) -> None:
    if not ipaddress.ip_address(ip).is_global:
        logger.warning(
            "publishing %s, which is not a public address: validators outside this network cannot reach it",
            ip,
        )


def resolve_published_ip(
    bind_ip: str, external_ip: str | None, *, real_chain: bool, probe: Probe = outward_interface_ip
) -> str:
    """The IP validators should dial (see the module docstring for the rules)."""
    if external_ip:
        ip = _checked(external_ip, "--axon.external_ip")
        if real_chain:
            _warn_if_private(ip)
        return ip
    bound = _checked(bind_ip, "--axon.ip")
    if not ipaddress.ip_address(bound).is_unspecified:
        if real_chain:
            _warn_if_private(bound)
        return bound
    if not real_chain:
        return "127.0.0.1"
    families = [socket.AF_INET6, socket.AF_INET] if ":" in bound else [socket.AF_INET]
    found = [ip for ip in (probe(family) for family in families) if ip]
    public = [ip for ip in found if ipaddress.ip_address(ip).is_global]
    if public:
        logger.info(
            "--axon.external_ip not set: publishing %s, the address of the interface that routes outwards "
            "(pass --axon.external_ip if validators reach this machine at another address)",
            public[0],
        )
        return canonical_ip(public[0])
    seen = ", ".join(found) if found else "no outward route"
    raise OperatorError(
        f"--axon.ip {bind_ip} is a wildcard and no public address could be detected ({seen}; behind NAT?); "
        "pass --axon.external_ip with the address validators can reach",
        code="config.invalid",
    )
