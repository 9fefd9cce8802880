"""``--proxy-headers``: trust X-Forwarded-For/-Proto from the proxies we were told about."""

from __future__ import annotations

import ipaddress

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Which peers may tell us the real client address and scheme."""

    def __init__(self, allow: str) -> None:
        self.any = False
        self.hosts: set[str] = set()
        self.networks: list[_Network] = []
        for item in (part.strip() for part in allow.split(",")):
            if not item:
                continue
            if item == "*":
                self.any = True
            elif "/" in item:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            else:
                self.hosts.add(item)

    def trusts(self, host: str) -> bool:
        if self.any or host in self.hosts:
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def apply(
        self,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        scheme: str,
    ) -> tuple[tuple[str, int] | None, str]:
        """The (client, scheme) the app should see, given the request headers.

        A Unix socket peer (``client`` None) is trusted, as gunicorn does: only
        local processes allowed by the socket file's permissions reach it, and
        the usual one is the proxy in front (deploy/nginx.conf).
        """
        if client is not None and not self.trusts(client[0]):
            return client, scheme
        for name, value in headers:
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip().lower()
                if proto in ("http", "https", "ws", "wss"):
                    scheme = proto
            elif name == b"x-forwarded-for":
                hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
                # The rightmost hop we do not trust is the client.
                for hop in reversed(hops):
                    if not self.trusts(hop):
                        client = (hop, 0)
                        break
                else:
                    if hops:
                        client = (hops[0], 0)
        return client, scheme
