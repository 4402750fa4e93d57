"""Network values: listening addresses (``ListenStream=`` and its siblings) and IP prefixes
(``IPAddressAllow=``, ``IPAddressDeny=``).

Rule 1: a parsed address is canonical. IP addresses are in the compressed form of ``ipaddress``,
so two spellings of one address compare equal, and :func:`render_listen` writes systemd's
spelling, with an IPv6 scope after the port.

Rule 2: nothing here resolves a name or touches a socket. ``localhost`` is not an address, and the
path of a Unix socket is checked for its length (``sun_path``), never for its existence.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Final

import attrs

from ._common import _CONTROL, _decimal, _encode
from ._paths import validate_absolute_path

# --- Listening addresses ------------------------------------------------------------------------


class SocketKind(enum.Enum):
    """The directive that names a listening socket, which decides its type."""

    STREAM = "ListenStream"
    DATAGRAM = "ListenDatagram"
    SEQPACKET = "ListenSequentialPacket"


@attrs.frozen
class InetListen:
    """An IP socket. ``host`` is None for a bare port: all addresses, ``[::]`` dual-stack as
    BindIPv6Only= allows; otherwise the compressed address, IPv6 with an optional ``%scope``."""

    host: str | None
    port: int
    family: int | None  # 4, 6, or None for a bare port


@attrs.frozen
class UnixListen:
    """A socket in the file system; an absolute, normalised path of at most 107 bytes."""

    path: str


@attrs.frozen
class AbstractListen:
    """A socket in the abstract namespace; the name after ``@``, 1..106 bytes."""

    name: str


ListenAddress = InetListen | UnixListen | AbstractListen
_SUN_PATH_MAX: Final = 107  # sizeof(sun_path) - 1: sockaddr_un_set_path() wants a trailing NUL


def _parse_port(text: str) -> int:
    return _decimal(text, 1, 65535, "port")  # parse_ip_port() in src/basic/parse-util.c


def _parse_scope(text: str) -> str:
    # ifname_valid_full() in src/basic/socket-util.c: printable ASCII but ':', '/', '%', at most
    # IFNAMSIZ-1 bytes (we leave out the 127-byte alternative names), or an interface number.
    if (
        re.fullmatch(r"[!-~]{1,15}", text) is None
        or re.search(r"[:/%]", text)
        or text in {".", ".."}
    ):
        msg = f"interface scope must be an interface name or number (got {text!r})"
        raise ValueError(msg)
    return text


def parse_listen(kind: SocketKind, text: str) -> ListenAddress:
    """Parse a ``Listen*=`` address, as socket_address_parse() in src/basic/socket-netlink.c.

    Accepts ``2048``, ``127.0.0.1:2048``, ``[::1]:2048``, ``[fe80::1]:80%eth0`` (systemd's
    spelling of a scope; ``[fe80::1%eth0]:80`` is accepted too), ``/run/foo.sock`` and ``@foo``.
    ``ListenSequentialPacket=`` takes only the last two, as systemd.

    Raises:
        ValueError: port 0, a bad address, a relative or unnormalised path, a missing port, or
            ``vsock:``. Unlike systemd, we refuse a scope on an IPv4 address (systemd ignores it).
    """
    if text.startswith("/"):
        path = validate_absolute_path(text)
        if path.endswith("/"):
            msg = "socket path must not end with '/'"
            raise ValueError(msg)
        if len(_encode(path)) > _SUN_PATH_MAX:
            msg = f"socket path must be at most {_SUN_PATH_MAX} bytes (got {len(_encode(path))})"
            raise ValueError(msg)
        return UnixListen(path)
    if text.startswith("@"):
        name = text[1:]
        if not name or _CONTROL.search(name) or len(_encode(name)) > _SUN_PATH_MAX - 1:
            msg = f"abstract socket name must be 1..{_SUN_PATH_MAX - 1} bytes without controls"
            raise ValueError(msg)
        return AbstractListen(name)
    if text.startswith("vsock:"):
        msg = "AF_VSOCK addresses are not supported by activator"
        raise ValueError(msg)
    if kind is SocketKind.SEQPACKET:
        msg = "must be an absolute path or @name (SOCK_SEQPACKET is only available for AF_UNIX)"
        raise ValueError(msg)
    if re.fullmatch(r"[0-9]+", text):
        return InetListen(None, _parse_port(text), None)
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^%]*)(?:%(.*))?", text, re.DOTALL)
    if bracketed is not None:
        address, port, scope = bracketed.groups()
        if scope is not None and "%" in address:
            msg = "interface scope must be given once"
            raise ValueError(msg)
        if scope is not None or "%" in address:
            scope = _parse_scope(address.partition("%")[2] if scope is None else scope)
            address = f"{address.partition('%')[0]}%{scope}"
        host = _address(address, 6)
        if host is None:
            msg = f"must be an IPv6 address in brackets (got {address!r})"
            raise ValueError(msg)
        return InetListen(host, _parse_port(port), 6)
    address, _, port = text.rpartition(":")
    if "%" in text:  # systemd parses and then ignores an IPv4 scope; we refuse it
        msg = "interface scope '%...' is only valid after an IPv6 address"
        raise ValueError(msg)
    host = _address(address, 4)
    if host is None:
        if _address(text, 4) or _address(text, 6):
            msg = "missing port: use ADDRESS:PORT for IPv4 or [ADDRESS]:PORT for IPv6"
        else:
            msg = "must be a port, IPv4:port, [IPv6]:port, an absolute path or @name"
        raise ValueError(msg)
    return InetListen(host, _parse_port(port), 4)


def _address(text: str, version: int) -> str | None:
    """The canonical text of an IP address of ``version``, or None."""
    try:
        return str(ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text))
    except ValueError:
        return None


def render_listen(value: ListenAddress) -> str:
    """Render an address in systemd's syntax, a scope after the port: ``[fe80::1]:80%eth0``."""
    if isinstance(value, UnixListen):
        return value.path
    if isinstance(value, AbstractListen):
        return f"@{value.name}"
    if value.host is None:
        return str(value.port)
    if value.family == 4:
        return f"{value.host}:{value.port}"
    address, percent, scope = value.host.partition("%")
    return f"[{address}]:{value.port}{percent}{scope}"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The words of config_parse_in_addr_prefixes() in src/core/load-fragment.c.
_PREFIX_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "any": ("0.0.0.0/0", "::/0"),
    "localhost": ("127.0.0.0/8", "::1/128"),
    "link-local": ("169.254.0.0/16", "fe80::/64"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
}


def parse_ip_prefixes(text: str) -> tuple[IPNetwork, ...]:
    """Parse ``IPAddressAllow=``/``IPAddressDeny=``: space-separated prefixes and words.

    ``any``, ``localhost``, ``link-local`` and ``multicast`` expand as in systemd; a plain address
    is a /32 or /128; host bits are masked off; duplicates are dropped (systemd keeps a set).
    """
    networks: dict[IPNetwork, None] = {}
    for word in re.split(r"[ \t\n\r]+", text):
        if word in _PREFIX_WORDS:
            networks.update(dict.fromkeys(map(ipaddress.ip_network, _PREFIX_WORDS[word])))
            continue
        # in_addr_prefix_from_string_auto(): a decimal prefix length only, no netmask, no scope.
        if re.fullmatch(r"[0-9A-Fa-f.:]+(?:/[0-9]{1,3})?", word) is None:
            msg = (
                f"must be an IP address, a prefix like '10.0.0.0/8', or a known word (got {word!r})"
            )
            raise ValueError(msg)
        try:
            networks[ipaddress.ip_network(word, strict=False)] = None
        except ValueError:
            msg = f"must be an IP address or prefix (got {word!r})"
            raise ValueError(msg) from None
    return tuple(networks)


def render_ip_prefixes(value: tuple[IPNetwork, ...]) -> str:
    """Render prefixes as space-separated ``address/length`` words."""
    return " ".join(network.with_prefixlen for network in value)
