"""Which address a handshake came from: the peer, or ``X-Forwarded-For`` behind trusted proxies.

Pure logic. ``X-Forwarded-For`` is only believed when the TCP peer is a trusted proxy
(``DISPATCHER_TRUSTED_PROXIES``); then the list is read from the right (the hop nearest to the
pod) past every trusted address, and the first address that is not trusted is the client. Anything
to the left of it was written by the client and is ignored. A pod with no trusted proxies never
reads the header, so a client cannot choose the address it is rate-limited under.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"


def parse_trusted(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.0.2.7, fd00::/8"`` as networks; raises ValueError naming a bad entry."""
    networks: list[Network] = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as written in a header or by the socket layer; IPv4-mapped IPv6 as IPv4."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]
) -> str:
    """The address to account a handshake to.

    ``peer`` is the TCP peer's address, ``forwarded_for`` every ``X-Forwarded-For`` header value
    in the order received.
    """
    if peer is None:
        return UNKNOWN
    nearest = parse_address(peer)
    if nearest is None:
        return peer
    if not trusted or not is_trusted(nearest, trusted):
        return str(nearest)
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:  # garbage from a trusted hop: stop at the last address we believe
            break
        nearest = address
        if not is_trusted(address, trusted):
            break
    return str(nearest)
