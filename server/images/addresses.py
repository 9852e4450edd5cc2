"""Which IP addresses an image may come from, and resolving a host to checked addresses only."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket

from server.images.policy import ImageError, ImageFetchPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 prefixes translate to an IPv4 address the gateway then reaches: judge that address.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@functools.lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to (mapped, 6to4, Teredo, NAT64)."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_public(ip: IPAddress) -> bool:
    # is_global alone misses multicast and IPv6 site-local (fec0::/10), and its exact set moved
    # between Python patch releases, so the named classes are checked explicitly too.
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    ):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        return all(_is_public(v4) for v4 in _embedded_ipv4(ip))
    return True


def is_address_allowed(ip: IPAddress, policy: ImageFetchPolicy) -> bool:
    if policy.allow_private_addresses or _is_public(ip):
        return True
    return any(ip.version == net.version and ip in net for net in _networks(policy.allowed_networks))


def check_domain(host: str, policy: ImageFetchPolicy) -> None:
    if not policy.allowed_domains:
        return
    host = host.lower().rstrip(".")
    for domain in policy.allowed_domains:
        domain = domain.lower().rstrip(".")
        if host == domain or host.endswith("." + domain):
            return
    raise ImageError(f"image host {host} is not in the list of allowed image domains.", code="image_host_not_allowed")


def parse_ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _getaddrinfo(host: str, port: int) -> list[str]:
    # The default executor keeps the event loop free while the system resolver (which also reads
    # /etc/hosts and understands forms like 127.1 or 0x7f.1) works.
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


async def resolve_checked(host: str, port: int, policy: ImageFetchPolicy) -> list[str]:
    """The host's addresses, in resolver order, if every one of them is allowed; else ImageError.

    Every address must pass, not just the first: a name that resolves to a public and a private
    address would otherwise reach the private one whenever the client falls back to it.
    An IP literal is judged without touching the network.
    """
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await _getaddrinfo(host, port)
        except (socket.gaierror, UnicodeError, OSError):
            raise ImageError(f"image host {host} could not be resolved.", code="image_fetch_failed") from None
        if not addresses:
            raise ImageError(f"image host {host} could not be resolved.", code="image_fetch_failed")
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        if not is_address_allowed(ip, policy):
            what = "is" if literal is not None else "resolves to"
            raise ImageError(
                f"image host {host} {what} a private or reserved address, which is not allowed.",
                code="image_host_not_allowed",
            )
    return addresses
