"""Random MAC addresses for the devices flannelish creates (the VTEP, the CNI bridge).

Standard library only: the CNI plugin imports this on its in-process path.
"""

from __future__ import annotations

import os


def random_mac() -> str:
    """A random locally administered unicast MAC, e.g. ``0e:5a:...``.

    The first octet has bit 0 clear (unicast) and bit 1 set (locally
    administered), so it never collides with a vendor's address space.
    """
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)
