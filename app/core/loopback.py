"""Whether a host name or address stays on this machine: the one check behind `allow_remote_api`, used by
the settings validation and by the API server before it binds."""

from __future__ import annotations

import ipaddress

LOCALHOST_NAMES = frozenset({"localhost", "localhost."})


def is_loopback(host: str) -> bool:
    """True for "localhost", any address in 127.0.0.0/8, "::1" (also as "[::1]", the URL form) and an
    IPv4-mapped loopback ("::ffff:127.0.0.1"); False for every other name or address, "" and "0.0.0.0"
    ("every interface") included. Names other than localhost are not resolved: they could point anywhere.
    """
    name = host.strip().lower()
    if name in LOCALHOST_NAMES:
        return True
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        if ":" not in name:
            return False  # brackets hold only an IPv6 address
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
