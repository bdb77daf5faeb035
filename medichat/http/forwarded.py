"""
The client's address behind reverse proxies that the operator trusts (C{--trusted-proxy}).

A proxy appends the address it received a request from to C{X-Forwarded-For}
(C{client, proxy1, proxy2}) or, per RFC 7239, to C{Forwarded} (C{for=client, for=proxy1}).
Anything left of what a trusted proxy appended may have been written by the client, so the
client is the B{rightmost hop that is not itself a trusted proxy}, and the headers are read
only when the request's peer is a trusted proxy.  C{Forwarded} wins when both are present.
A hop that is not an IP address (C{unknown}, an obfuscated C{_name}) leaves the peer's own
address: nothing better is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from twisted.web.iweb import IRequest

__all__ = ["Network", "client_address", "forwarded_client", "parse_trusted_proxy"]

Network = IPv4Network | IPv6Network


def parse_trusted_proxy(text: str) -> Network:
    """
    An IP address (one host) or a CIDR network, as C{--trusted-proxy} takes it.

    @raise ValueError: if C{text} is neither (a network with host bits set included).
    """
    return ip_network(text.strip(), strict=True)


def _address(hop: str) -> str | None:
    """
    The IP address of one hop (C{1.2.3.4}, C{1.2.3.4:80}, C{[::1]:80}, C{::1}), normalised,
    or L{None} if it is none.
    """
    hop = hop.strip().strip('"').strip()
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ip_address(hop))
    except ValueError:
        return None


def _forwarded_hops(values: Iterable[str]) -> list[str]:
    """
    The C{for=} parameters of C{Forwarded} header values, left to right; an element
    without one counts as an unusable hop.
    """
    hops = []
    for value in values:
        for element in value.split(","):
            found = ""
            for pair in element.split(";"):
                name, _, parameter = pair.partition("=")
                if name.strip().lower() == "for":
                    found = parameter
            hops.append(found)
    return hops


def forwarded_client(
    peer: str,
    forwarded: Sequence[str],
    x_forwarded_for: Sequence[str],
    trusted: Sequence[Network],
) -> str:
    """
    The client's address for a request from C{peer}.

    @param peer: the address of the connection's other end.
    @param forwarded: the C{Forwarded} header values, in order.
    @param x_forwarded_for: the C{X-Forwarded-For} header values, in order.
    @param trusted: the networks of the trusted proxies.
    """

    def is_trusted(address: str) -> bool:
        parsed = ip_address(address)
        return any(parsed in network for network in trusted)

    if _address(peer) is None or not is_trusted(peer):
        return peer
    if forwarded:
        hops = _forwarded_hops(forwarded)
    else:
        hops = [hop for value in x_forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return client
        client = address
        if not is_trusted(address):
            return client
    return client


def client_address(request: IRequest, trusted: Sequence[Network]) -> str:
    """
    The client's address of a request: its peer's, or the one forwarded by a trusted
    proxy (see the module docstring).
    """
    peer = request.getClientAddress()
    host = str(getattr(peer, "host", None) or peer)
    if not trusted:
        return host
    headers = request.requestHeaders
    return forwarded_client(
        host,
        [v.decode("latin-1") for v in headers.getRawHeaders(b"forwarded", [])],
        [v.decode("latin-1") for v in headers.getRawHeaders(b"x-forwarded-for", [])],
        trusted,
    )
