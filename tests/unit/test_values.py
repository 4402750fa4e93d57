"""Converters of directive values (pure): man-page examples, systemd's quirks, and round-trips.

The expected values of the time spans were checked with ``systemd-analyze timespan`` (systemd 252).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator import values as v
from activator.values import (
    AbstractListen,
    BindEntry,
    BindIPv6Only,
    InetListen,
    IOSpec,
    PathEntry,
    Percent,
    ProtectHome,
    ProtectSystem,
    RestartPolicy,
    RLimit,
    RuntimeDirectoryPreserve,
    ServiceType,
    SocketKind,
    TmpfsEntry,
    UnixListen,
)

SEC = 1_000_000
MAX = 2**64 - 2  # the largest finite value; 2**64-1 means infinity in systemd


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


# --- Booleans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "yes", "y", "true", "t", "on", "YES", "True", "oN"])
def test_boolean_true(text: str) -> None:
    assert v.parse_boolean(text) is True


@pytest.mark.parametrize("text", ["0", "no", "n", "false", "f", "off", "NO", "False", "OFF"])
def test_boolean_false(text: str) -> None:
    assert v.parse_boolean(text) is False


@pytest.mark.parametrize("text", ["", "2", "yess", "enable", "ye s", "\u212aYES"])
def test_boolean_invalid(text: str) -> None:
    assert (
        reason(lambda: v.parse_boolean(text))
        == f"must be a boolean like 'yes' or 'no' (got {text!r})"
    )


@given(st.booleans())
def test_boolean_round_trip(value: bool) -> None:
    assert v.parse_boolean(v.render_boolean(value)) is value


# --- Time spans ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "usec"),
    [
        # systemd.time(7), "Parsing time spans"
        ("2 h", 2 * 3600 * SEC),
        ("2hours", 2 * 3600 * SEC),
        ("48hr", 48 * 3600 * SEC),
        ("1y 12month", 63115200 * SEC),
        ("55s500ms", 55_500_000),
        ("300ms20s", 20_300_000),
        ("5day", 5 * 86400 * SEC),
        ("5", 5 * SEC),
        ("1.5s", 1_500_000),
        ("1min 30s", 90 * SEC),
        ("2h30m", 9000 * SEC),
        ("1 min", 60 * SEC),
        ("1M", 2629800 * SEC),
        ("1w", 7 * 86400 * SEC),
        ("1us", 1),
        ("1µs", 1),
        ("1μs", 1),
        ("1msec", 1000),
        ("0", 0),
        ("infinity", None),
        # parse_time()'s quirks, as systemd-analyze shows them
        (".5s", 500_000),
        ("12.34s.56", 12_900_000),
        ("5s6", 11 * SEC),
        ("1 5", 6 * SEC),
        ("1.1234567s", 1_123_456),
        ("0.0000001s", 0),
        ("1.5us", 1),
        ("3.5min", 210 * SEC),
        ("1.123456789h", 4044444435),
    ],
)
def test_timespan_examples(text: str, usec: int | None) -> None:
    assert v.parse_timespan(text) == usec


def test_timespan_default_unit() -> None:
    assert v.parse_timespan("5", default_unit="ms") == 5000
    assert v.parse_timespan("5s", default_unit="ms") == 5 * SEC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("-5s", "must not be negative"),
        ("5 fortnight", "unknown time unit 'fortnight'"),
        ("1mins", "unknown time unit 'mins'"),
        ("1Ms", "unknown time unit 'Ms'"),
        ("1.", "must be a time span like '1min 30s' (got '1.')"),
        ("12.34.56", "must be a time span like '1min 30s' (got '12.34.56')"),
        ("1s-", "must be a time span like '1min 30s' (got '-')"),
        ("+5", "must be a time span like '1min 30s' (got '+5')"),
        ("1e3", "unknown time unit 'e'"),
        ("infinityx", "must be a time span like '1min 30s' (got 'infinityx')"),
        ("18446744073709551615us", "must be at most 18446744073709551614us"),
        ("9223372036854775808us", "must be at most 18446744073709551614us"),
        ("600000y", "must be at most 18446744073709551614us"),
    ],
)
def test_timespan_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_timespan(text)) == message


@pytest.mark.parametrize(
    ("usec", "text"),
    [  # the "Human:" line of systemd-analyze timespan
        (90 * SEC, "1min 30s"),
        (1_500_000, "1.500000s"),
        (1500, "1.500ms"),
        (500_000, "500ms"),
        (61_500_000, "1min 1.500000s"),
        (3600 * SEC + 500_000, "1h 500ms"),
        (34560000 * SEC, "1y 1month 4d 7h 30min"),
        (0, "0"),
        (1, "1us"),
        (None, "infinity"),
    ],
)
def test_timespan_render(usec: int | None, text: str) -> None:
    assert v.render_timespan(usec) == text


@given(st.none() | st.integers(0, MAX) | st.integers(0, 10**9))
def test_timespan_round_trip(usec: int | None) -> None:
    assert v.parse_timespan(v.render_timespan(usec)) == usec


# --- Sizes and limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("1K", 1024),
        ("1.5G", 1536 * 1024**2),
        ("1G 512M", 1536 * 1024**2),
        ("1K2", 1026),  # parse_size() adds the parts
        ("10.M", 10 * 1024**2),
        ("0.1K", 102),  # truncated, as systemd's double arithmetic
        ("15E", 15 * 1024**6),
        ("2B", 2),
        ("infinity", None),
    ],
)
def test_size_examples(text: str, size: int | None) -> None:
    assert v.parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("-1", "must not be negative"),
        ("1k", "must be a size like '512M' or '1.5G' (got 'k')"),
        ("1KB", "must be a size like '512M' or '1.5G' (got 'B')"),
        ("1M 1G", "size suffixes must decrease (got 'G' after larger ones)"),
        ("1 2", "size suffixes must decrease (got 'no suffix' after larger ones)"),
        ("16E", "must be less than 16E"),
        ("1" * 30, "must be less than 16E"),
    ],
)
def test_size_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_size(text)) == message


@pytest.mark.parametrize(
    ("size", "text"), [(3 * 1024**3, "3G"), (1536, "1536"), (0, "0"), (None, "infinity")]
)
def test_size_render(size: int | None, text: str) -> None:
    assert v.render_size(size) == text


@given(st.none() | st.integers(0, MAX) | st.integers(0, 2**20).map(lambda n: n * 1024**3))
def test_size_round_trip(size: int | None) -> None:
    assert v.parse_size(v.render_size(size)) == size


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1G", 1024**3),
        ("12%", Percent(1200)),
        ("12.5%", Percent(1250)),
        ("12.34%", Percent(1234)),
        ("100%", Percent(10000)),
        ("5.5‰", Percent(550)),
        ("7‱", Percent(700)),
        ("infinity", None),
    ],
)
def test_memory_limit_examples(text: str, limit: int | Percent | None) -> None:
    assert v.parse_memory_limit(text) == limit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("101%", "must be 0%..100% (got 101%)"),
        ("12.345%", "must be a number with at most 2 decimals before '%' (got '12.345%')"),
        ("12.%", "must be a number with at most 2 decimals before '%' (got '12.%')"),
        ("0", "must be more than zero (got 0)"),
        ("0%", "must be more than zero (got 0%)"),
        ("lots", "must be a size like '512M' or '1.5G' (got 'lots')"),
        ("5.55‰", "must be a number with at most 1 decimals before '‰' (got '5.55‰')"),
        ("5.5‱", "must be a number with at most 0 decimals before '‱' (got '5.5‱')"),
    ],
)
def test_memory_limit_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_memory_limit(text)) == message


def test_memory_limit_zero_when_allowed() -> None:
    assert v.parse_memory_limit("0", allow_zero=True) == 0
    assert v.parse_memory_limit("0%", allow_zero=True) == Percent(0)


def test_tasks_max() -> None:
    assert v.parse_tasks_max("512") == 512
    assert v.parse_tasks_max("15%") == Percent(1500)
    assert v.parse_tasks_max("0%") == Percent(0)  # config_parse_tasks_max() in 252 takes it
    assert v.parse_tasks_max("infinity") is None
    assert reason(lambda: v.parse_tasks_max("0")) == "must be 1..18446744073709551614 (got 0)"
    assert reason(lambda: v.parse_tasks_max("1K")) == "must be a decimal integer (got '1K')"


def test_cpu_quota() -> None:
    assert v.parse_cpu_quota("20%") == Percent(2000)
    assert v.parse_cpu_quota("250.5%") == Percent(25050)
    assert v.parse_cpu_quota("21474836.47%") == Percent(2**31 - 1)
    assert reason(lambda: v.parse_cpu_quota("0%")) == "must be more than 0%"
    assert reason(lambda: v.parse_cpu_quota("20")) == "must be a percentage like '20%' (got '20')"
    assert reason(lambda: v.parse_cpu_quota("infinity")).startswith("must be a percentage")
    assert reason(lambda: v.parse_cpu_quota("21474836.48%")) == (
        "must be 0%..21474836.47% (got 21474836.48%)"
    )


@pytest.mark.parametrize(
    ("limit", "text"),
    [(Percent(1250), "12.5%"), (Percent(1200), "12%"), (Percent(1), "0.01%"), (None, "infinity")],
)
def test_limit_render(limit: int | Percent | None, text: str) -> None:
    assert v.render_limit(limit) == text


percents = st.builds(Percent, st.integers(0, 10000))


@given(st.none() | st.integers(1, MAX) | percents.filter(lambda p: p.permyriad > 0))
def test_memory_limit_round_trip(limit: int | Percent | None) -> None:
    assert v.parse_memory_limit(v.render_limit(limit)) == limit


@given(st.none() | st.integers(1, MAX) | percents)
def test_tasks_max_round_trip(limit: int | Percent | None) -> None:
    assert v.parse_tasks_max(v.render_limit(limit)) == limit


@given(st.builds(Percent, st.integers(1, 2**31 - 1)))
def test_cpu_quota_round_trip(quota: Percent) -> None:
    assert v.parse_cpu_quota(v.render_limit(quota)) == quota


@pytest.mark.parametrize(
    ("key", "text", "limit"),
    [
        ("LimitNOFILE", "1024:4096", RLimit(1024, 4096)),
        ("LimitNOFILE", "4096", RLimit(4096, 4096)),
        ("LimitNOFILE", "1024:infinity", RLimit(1024, None)),
        ("LimitNPROC", "infinity", RLimit(None, None)),
        ("LimitAS", "1G:2G", RLimit(1024**3, 2 * 1024**3)),
        ("LimitCORE", "0", RLimit(0, 0)),
        ("LimitCPU", "2min", RLimit(120, 120)),
        ("LimitCPU", "1.5", RLimit(2, 2)),  # rlimit_parse_sec() rounds up
        ("LimitCPU", "1ms:infinity", RLimit(1, None)),
    ],
)
def test_rlimit_examples(key: str, text: str, limit: RLimit) -> None:
    assert v.parse_rlimit(key, text) == limit


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("LimitNOFILE", "4096:1024", "soft limit must not exceed hard limit (got 4096 > 1024)"),
        ("LimitNOFILE", "infinity:1", "soft limit must not exceed hard limit (got infinity > 1)"),
        ("LimitNOFILE", "1:2:3", "must be one value or 'soft:hard', neither empty (got 2 ':')"),
        ("LimitNOFILE", "5:", "must be one value or 'soft:hard', neither empty (got 1 ':')"),
        ("LimitNOFILE", "1K", "must be a decimal integer (got '1K')"),
        ("LimitAS", "lots", "must be a size like '512M' or '1.5G' (got 'lots')"),
        ("LimitCPU", "1fortnight", "unknown time unit 'fortnight'"),
    ],
)
def test_rlimit_invalid(key: str, text: str, message: str) -> None:
    assert reason(lambda: v.parse_rlimit(key, text)) == message


def test_rlimit_unknown_key() -> None:
    assert reason(lambda: v.parse_rlimit("LimitNICE", "1")).startswith(
        "unknown resource limit 'LimitNICE' (supported: LimitCPU, "
    )


@st.composite
def rlimits(draw: st.DrawFn) -> tuple[str, RLimit]:
    key = draw(st.sampled_from(["LimitNOFILE", "LimitAS", "LimitCPU", "LimitSTACK"]))
    top = MAX // SEC if key == "LimitCPU" else MAX
    soft, hard = sorted(draw(st.lists(st.integers(0, top), min_size=2, max_size=2)))
    pairs = [(soft, hard), (hard, hard), (soft, None), (None, None)]  # None is infinity
    return key, RLimit(*draw(st.sampled_from(pairs)))


@given(rlimits())
def test_rlimit_round_trip(case: tuple[str, RLimit]) -> None:
    key, limit = case
    text = v.render_rlimit(key, limit)
    assert v.parse_rlimit(key, text) == limit
    assert (":" in text) == (limit.soft != limit.hard)


# --- Numbers, modes, signals --------------------------------------------------------------------


def test_integer() -> None:
    assert v.parse_integer("42", minimum=0, maximum=100) == 42
    assert v.parse_integer("-3", minimum=-5, maximum=5) == -3
    assert reason(lambda: v.parse_integer("101", minimum=0, maximum=100)) == (
        "must be 0..100 (got 101)"
    )


@pytest.mark.parametrize("text", ["0x10", "1_0", "+1", " 1", "1.0", "١٢", "", "9" * 5000])
def test_integer_is_plain_decimal(text: str) -> None:
    assert reason(lambda: v.parse_integer(text, minimum=0, maximum=100)).startswith("must be")


ZEROS = "0" * 5000  # int() refuses more than 4300 digits, leading zeros included


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (v.parse_timespan, f"{ZEROS}5s", 5 * SEC),
        (v.parse_timespan, f"1.{ZEROS}1s", SEC),
        (v.parse_size, f"{ZEROS}1K", 1024),
        (v.parse_size, f"0.{ZEROS}1K", 0),
        (v.parse_memory_limit, f"{ZEROS}50%", Percent(5000)),
        (v.parse_mode, f"{ZEROS}755", 0o755),
        (v.parse_nice, f"-{ZEROS}5", -5),
        (v.parse_signal, f"{ZEROS}9", 9),
        (lambda t: v.parse_listen(SocketKind.STREAM, t), f"{ZEROS}80", InetListen(None, 80, None)),
    ],
)
def test_leading_zeros_do_not_reach_int(
    parse: Callable[[str], object], text: str, value: object
) -> None:
    assert parse(text) == value


def test_nice() -> None:
    assert v.parse_nice("-20") == -20
    assert v.parse_nice("19") == 19
    assert reason(lambda: v.parse_nice("20")) == "must be -20..19 (got 20)"


@pytest.mark.parametrize(("text", "mode"), [("0755", 0o755), ("755", 0o755), ("7777", 0o7777)])
def test_mode(text: str, mode: int) -> None:
    assert v.parse_mode(text) == mode


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0789", "must be an octal mode like '0755' (got '0789')"),
        ("0o755", "must be an octal mode like '0755' (got '0o755')"),
        ("10000", "must be 0..07777 (got 10000)"),
        ("-755", "must be an octal mode like '0755' (got '-755')"),
    ],
)
def test_mode_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_mode(text)) == message


@given(st.integers(0, 0o7777))
def test_mode_round_trip(mode: int) -> None:
    text = v.render_mode(mode)
    assert len(text) == 4
    assert v.parse_mode(text) == mode


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("SIGTERM", 15),
        ("TERM", 15),
        ("15", 15),
        ("SIGKILL", 9),
        ("SIGRTMIN", 34),
        ("SIGRTMIN+3", 37),
        ("RTMIN+3", 37),
        ("RTMAX", 64),
        ("SIGRTMAX-1", 63),
        ("32", 32),  # SIGNAL_VALID() takes the numbers glibc reserves
    ],
)
def test_signal(text: str, number: int) -> None:
    assert v.parse_signal(text) == number


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "signal number must be 1..64 (got 0)"),
        ("65", "signal number must be 1..64 (got 65)"),
        ("sigterm", "unknown signal 'sigterm'"),
        ("SIG15", "unknown signal 'SIG15'"),
        ("SIGIOT", "unknown signal 'SIGIOT'"),
        ("RTMIN+31", "real-time signal offset must be 0..30 (got 31)"),
    ],
)
def test_signal_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_signal(text)) == message


@pytest.mark.parametrize(
    ("number", "text"), [(15, "SIGTERM"), (34, "SIGRTMIN"), (37, "SIGRTMIN+3"), (33, "33")]
)
def test_signal_render(number: int, text: str) -> None:
    assert v.render_signal(number) == text


@given(st.integers(1, 64))
def test_signal_round_trip(number: int) -> None:
    assert v.parse_signal(v.render_signal(number)) == number


# --- Listening addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("2048", InetListen(None, 2048, None)),
        ("127.0.0.1:2048", InetListen("127.0.0.1", 2048, 4)),
        ("[::1]:2048", InetListen("::1", 2048, 6)),
        ("[::]:2048", InetListen("::", 2048, 6)),
        ("[0:0::0:1]:80", InetListen("::1", 80, 6)),
        ("[fe80::1]:80%eth0", InetListen("fe80::1%eth0", 80, 6)),  # systemd.socket(5)
        ("[fe80::1%eth0]:80", InetListen("fe80::1%eth0", 80, 6)),
        ("[fe80::1]:80%2", InetListen("fe80::1%2", 80, 6)),
        ("/run/foo.sock", UnixListen("/run/foo.sock")),
        ("@foo", AbstractListen("foo")),
    ],
)
def test_listen_examples(text: str, address: v.ListenAddress) -> None:
    assert v.parse_listen(SocketKind.STREAM, text) == address


BAD_SCOPE = "interface scope must be an interface name or number"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "port must be 1..65535 (got 0)"),
        ("99999", "port must be 1..65535 (got 99999)"),
        ("127.0.0.1:0", "port must be 1..65535 (got 0)"),
        ("[::1]:http", "port must be a decimal integer (got 'http')"),
        ("127.0.0.1", "missing port: use ADDRESS:PORT for IPv4 or [ADDRESS]:PORT for IPv6"),
        ("::1", "missing port: use ADDRESS:PORT for IPv4 or [ADDRESS]:PORT for IPv6"),
        ("256.0.0.1:80", "must be a port, IPv4:port, [IPv6]:port, an absolute path or @name"),
        ("foo.sock", "must be a port, IPv4:port, [IPv6]:port, an absolute path or @name"),
        ("[1.2.3.4]:80", "must be an IPv6 address in brackets (got '1.2.3.4')"),
        ("[fe80::1%a]:80%b", "interface scope must be given once"),
        ("[fe80::1]:80%a:b", f"{BAD_SCOPE} (got 'a:b')"),
        ("[fe80::1]:80%waytoolongtobeaname", f"{BAD_SCOPE} (got 'waytoolongtobeaname')"),
        ("127.0.0.1:80%lo", "interface scope '%...' is only valid after an IPv6 address"),
        ("vsock:2:1234", "AF_VSOCK addresses are not supported by activator"),
        ("/run/../foo.sock", "must be normalised (no '.' or '..' components, no '//'; got '..')"),
        ("/run/", "socket path must not end with '/'"),
        ("/" + "x" * 107, "socket path must be at most 107 bytes (got 108)"),
        ("@", "abstract socket name must be 1..106 bytes without controls"),
        ("@" + "x" * 107, "abstract socket name must be 1..106 bytes without controls"),
    ],
)
def test_listen_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_listen(SocketKind.STREAM, text)) == message


def test_listen_sequential_packet_is_unix_only() -> None:
    assert v.parse_listen(SocketKind.SEQPACKET, "/run/a") == UnixListen("/run/a")
    assert v.parse_listen(SocketKind.SEQPACKET, "@a") == AbstractListen("a")
    assert v.parse_listen(SocketKind.DATAGRAM, "53") == InetListen(None, 53, None)


@pytest.mark.parametrize("text", ["2048", "[::1]:80", "127.0.0.1:80"])
def test_listen_sequential_packet_refuses_ip(text: str) -> None:
    assert reason(lambda: v.parse_listen(SocketKind.SEQPACKET, text)) == (
        "must be an absolute path or @name (SOCK_SEQPACKET is only available for AF_UNIX)"
    )


def test_listen_render_puts_the_scope_after_the_port() -> None:
    assert v.render_listen(InetListen("fe80::1%eth0", 80, 6)) == "[fe80::1]:80%eth0"


def byte_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def absolute_paths(alphabet: str = "az09._- :\\\"'%\u00a0é😀\udcff") -> st.SearchStrategy[str]:
    """Normalised absolute paths made of the characters that quoting and escaping care about."""
    component = st.text(st.sampled_from(alphabet), min_size=1, max_size=8)
    parts = st.lists(component.filter(lambda c: c not in {".", ".."}), max_size=5)
    return parts.map(lambda parts: "/" + "/".join(parts))


ports = st.integers(1, 65535)
scopes = st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)

listen_addresses = st.one_of(
    st.builds(InetListen, st.none(), ports, st.none()),
    st.builds(lambda a, p: InetListen(str(a), p, 4), st.ip_addresses(v=4), ports),
    st.builds(
        lambda a, s, p: InetListen(str(a) + (f"%{s}" if s else ""), p, 6),
        st.ip_addresses(v=6),
        st.none() | scopes,
        ports,
    ),
    st.builds(UnixListen, absolute_paths().filter(lambda p: p != "/" and byte_length(p) <= 107)),
    st.builds(
        AbstractListen,
        st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1).filter(
            lambda n: len(n.encode()) <= 106
        ),
    ),
)


@given(listen_addresses)
def test_listen_round_trip(address: v.ListenAddress) -> None:
    kind = SocketKind.STREAM if isinstance(address, InetListen) else SocketKind.SEQPACKET
    assert v.parse_listen(kind, v.render_listen(address)) == address


def test_ip_prefixes_words_expand_as_systemd() -> None:
    assert v.render_ip_prefixes(v.parse_ip_prefixes("any")) == "0.0.0.0/0 ::/0"
    assert v.render_ip_prefixes(v.parse_ip_prefixes("localhost link-local")) == (
        "127.0.0.0/8 ::1/128 169.254.0.0/16 fe80::/64"
    )
    assert v.render_ip_prefixes(v.parse_ip_prefixes("multicast")) == "224.0.0.0/4 ff00::/8"


def test_ip_prefixes_addresses() -> None:
    assert v.parse_ip_prefixes("10.1.2.3/8 192.168.1.7  fe80::1/64 10.0.0.0/8") == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("192.168.1.7/32"),
        ipaddress.IPv6Network("fe80::/64"),
    )


NOT_A_PREFIX = "must be an IP address, a prefix like '10.0.0.0/8', or a known word"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.0/255.0.0.0", f"{NOT_A_PREFIX} (got '10.0.0.0/255.0.0.0')"),
        ("everything", f"{NOT_A_PREFIX} (got 'everything')"),
        ("fe80::1%eth0", f"{NOT_A_PREFIX} (got 'fe80::1%eth0')"),
        ("10.0.0.0/33", "must be an IP address or prefix (got '10.0.0.0/33')"),
        ("10.0.0", "must be an IP address or prefix (got '10.0.0')"),
    ],
)
def test_ip_prefixes_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_ip_prefixes(text)) == message


networks = st.builds(
    lambda a, n: ipaddress.ip_network(f"{a}/{n % (a.max_prefixlen + 1)}", strict=False),
    st.ip_addresses(),
    st.integers(0, 128),
)


@given(st.lists(networks, unique=True, min_size=1).map(tuple))
def test_ip_prefixes_round_trip(value: tuple[v.IPNetwork, ...]) -> None:
    assert v.parse_ip_prefixes(v.render_ip_prefixes(value)) == value


# --- Words and quoting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        # systemd.service(5), "Command lines"
        ("\"ONE=one\" 'TWO=two two'", ["ONE=one", "TWO=two two"]),
        ("ONE='one' \"TWO='two two' too\" THREE=", ["ONE=one", "TWO='two two' too", "THREE="]),
        ("sh -c 'dmesg | tac'", ["sh", "-c", "dmesg | tac"]),
        ("a  b\t c", ["a", "b", "c"]),
        ("", []),
        ('""', [""]),
        ('--name="a b"c', ["--name=a bc"]),  # extract_first_word() opens quotes mid-word
        (r"\a\b\f\n\r\t\v\\\"\'\s", ["\a\b\f\n\r\t\v\\\"' "]),
        (r"'\x41\101\u00e9\U0001F600'", ["AAé😀"]),
        (r"\xc3\xa9", ["é"]),  # \x makes bytes, which decode together
        (r"\xff", ["\udcff"]),  # a byte that is not UTF-8 survives as a surrogate escape
        (r"\ud800", ["\udced\udca0\udc80"]),  # \u writes any code point, even a surrogate
        ("'a\"b' \"c'd\"", ['a"b', "c'd"]),
    ],
)
def test_split_words(text: str, words: list[str]) -> None:
    assert v.split_words(text) == words


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (r"a\q", "unknown escape '\\q' (write '\\\\' for a backslash)"),
        ("a\\", "trailing backslash"),
        ('"abc', 'unterminated " quote'),
        ("it's", "unterminated ' quote"),
        (r"\x00", "invalid escape '\\x00'"),
        (r"\x4", "invalid escape '\\x4'"),
        (r"\000", "invalid escape '\\000'"),
        (r"\400", "invalid escape '\\400'"),
        (r"\u0000", "invalid escape '\\u0000'"),
        (r"\U0000FFFE", "invalid escape '\\U0000FFFE'"),
        (r"\U00110000", "invalid escape '\\U00110000'"),
    ],
)
def test_split_words_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.split_words(text)) == message


@pytest.mark.parametrize(
    ("word", "token"),
    [
        ("abc", "abc"),
        ("", '""'),
        ("a b", '"a b"'),
        ('say "hi"', r'"say \"hi\""'),
        ("it's", '"it\'s"'),
        ("a\\b", r'"a\\b"'),
        ("line\n", r'"line\n"'),
        ("\udcff", r'"\xff"'),
        ("\u00a0", r'"\u00a0"'),
        ("é", "é"),
    ],
)
def test_quote_word(word: str, token: str) -> None:
    assert v.quote_word(word) == token


@pytest.mark.parametrize("word", ["\0", "\ud800", "\udcc3\udca9"])
def test_quote_word_refuses_what_no_token_can_express(word: str) -> None:
    with pytest.raises(ValueError):
        v.quote_word(word)


canonical_words = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0")
) | st.binary().filter(lambda b: b"\0" not in b).map(lambda b: b.decode("utf-8", "surrogateescape"))


@given(canonical_words)
def test_quote_word_round_trip(word: str) -> None:
    assert v.split_words(v.quote_word(word)) == [word]


@given(st.lists(canonical_words))
def test_quoted_words_join_with_spaces(words: list[str]) -> None:
    assert v.split_words(" ".join(map(v.quote_word, words))) == words


# --- Names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["www", "_apt", "systemd-network", "a" * 31, "A1_-"])
def test_user_name(name: str) -> None:
    assert v.parse_user_name(name, allow_numeric=False) == name


@pytest.mark.parametrize("name", ["", "1abc", "-x", "a" * 32, "a.b", "a$", "é", "0"])
def test_user_name_invalid(name: str) -> None:
    assert reason(lambda: v.parse_user_name(name, allow_numeric=False)).startswith(
        "must be 1..31 of [A-Za-z0-9_-]"
    )


def test_user_name_numeric() -> None:
    assert v.parse_user_name("0", allow_numeric=True) == "0"
    assert v.parse_user_name("0100", allow_numeric=True) == "100"
    assert v.parse_user_name("4294967294", allow_numeric=True) == "4294967294"
    assert reason(lambda: v.parse_user_name("65535", allow_numeric=True)) == (
        "numeric ID must not be 65535"
    )
    assert reason(lambda: v.parse_user_name("4294967295", allow_numeric=True)) == (
        "numeric ID must be 0..4294967294 (got 4294967295)"
    )


def test_env() -> None:
    assert v.parse_env_assignment("FOO=bar baz") == ("FOO", "bar baz")
    assert v.parse_env_assignment("_X1=") == ("_X1", "")
    assert v.parse_env_assignment("A=b=c\tmultiple\nlines") == ("A", "b=c\tmultiple\nlines")
    assert v.parse_env_name("PATH") == "PATH"
    assert reason(lambda: v.parse_env_assignment("FOO")) == "must be NAME=VALUE (missing '=')"
    assert reason(lambda: v.parse_env_assignment("1X=a")) == (
        "variable name must be [A-Za-z_][A-Za-z0-9_]* (got '1X')"
    )
    assert reason(lambda: v.parse_env_assignment("=a")).startswith("variable name must be")
    assert reason(lambda: v.parse_env_assignment("A=\x1b[0m")) == (
        "value of A must be UTF-8 without control characters but tab and newline"
    )
    assert reason(lambda: v.parse_env_assignment("A=\udcff")).startswith("value of A must be")


# --- Paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/var/lib/foo", "/var/lib/foo/", "/with space/é"])
def test_absolute_path(path: str) -> None:
    assert v.validate_absolute_path(path) == path


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("var/lib", "must be an absolute path (got relative path 'var/lib')"),
        ("", "must be an absolute path (got relative path '')"),
        ("/a//b", "must be normalised (no '.' or '..' components, no '//'; got '//')"),
        ("/a/./b", "must be normalised (no '.' or '..' components, no '//'; got '.')"),
        ("/a/..", "must be normalised (no '.' or '..' components, no '//'; got '..')"),
        ("/a\nb", "must not contain control characters"),
        ("/" + "x" * 256, "must be at most 4095 bytes, each component at most 255"),
        ("/x" * 2048, "must be at most 4095 bytes, each component at most 255"),
    ],
)
def test_absolute_path_invalid(path: str, message: str) -> None:
    assert reason(lambda: v.validate_absolute_path(path)) == message


@pytest.mark.parametrize("word", ["foo", "foo/bar", "my.app", "..foo"])
def test_relative_directory(word: str) -> None:
    assert v.validate_relative_directory(word) == word


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("/var/lib/foo", "must be relative (got absolute path '/var/lib/foo')"),
        ("foo/../bar", "must not contain '..'"),
        ("./foo", "must not contain '.'"),
        ("foo//bar", "must not contain '//' or end with '/'"),
        ("foo/", "must not contain '//' or end with '/'"),
        ("", "must not be empty"),
        ("foo:bar", "symlink form 'foo:bar' is not supported"),
        ("private", "must not be 'private' or below it"),
        ("private/foo", "must not be 'private' or below it"),
        ("a\tb", "must not contain control characters"),
    ],
)
def test_relative_directory_invalid(word: str, message: str) -> None:
    assert reason(lambda: v.validate_relative_directory(word)) == message


@pytest.mark.parametrize(
    "word", ["name/1-127.0.0.1:7007-127.0.0.1:41234", "name-1-::1:80-::1:5555", ":", "a:b"]
)
def test_a_resolved_directory_may_hold_the_colon_an_instance_name_brings(word: str) -> None:
    assert v.validate_resolved_directory(word) == word
    assert "symlink form" in reason(lambda: v.validate_relative_directory(word))


@given(st.text(st.sampled_from("ab:./-\t"), max_size=8))
def test_resolved_and_relative_directories_differ_only_in_colons(word: str) -> None:
    """Everything but the colon is checked alike: only what specifiers resolve to may hold one."""

    def verdict(check: Callable[[str], str]) -> str:
        try:
            return check(word)
        except ValueError as error:
            return f"refused: {error}"

    relative = verdict(v.validate_relative_directory)
    if ":" in word:
        assert relative == f"refused: symlink form {word!r} is not supported"
    else:
        assert verdict(v.validate_resolved_directory) == relative


def test_path_entry() -> None:
    assert v.parse_path_entry("/srv") == PathEntry("/srv", ignore_missing=False)
    assert v.parse_path_entry("-/srv/maybe") == PathEntry("/srv/maybe", ignore_missing=True)
    assert reason(lambda: v.parse_path_entry("+/srv")) == (
        "'+' prefix needs RootDirectory=, which activator does not support"
    )
    assert reason(lambda: v.parse_path_entry("-+/srv")).startswith("'+' prefix")
    assert reason(lambda: v.parse_path_entry("srv")).startswith("must be an absolute path")


@given(st.builds(PathEntry, absolute_paths(), st.booleans()))
def test_path_entry_round_trip(entry: PathEntry) -> None:
    assert v.parse_path_entry(v.render_path_entry(entry)) == entry
    (word,) = v.split_words(v.quote_word(v.render_path_entry(entry)))
    assert v.parse_path_entry(word) == entry


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("/a", BindEntry("/a", "/a", ignore_missing=False, recursive=True)),
        ("-/a:/b", BindEntry("/a", "/b", ignore_missing=True, recursive=True)),
        ("/a:/b:norbind", BindEntry("/a", "/b", ignore_missing=False, recursive=False)),
        ("/a:/b:rbind", BindEntry("/a", "/b", ignore_missing=False, recursive=True)),
        ("/a:/b:", BindEntry("/a", "/b", ignore_missing=False, recursive=True)),
        (r"/a\:b:/c\ d", BindEntry("/a:b", "/c d", ignore_missing=False, recursive=True)),
        ('"/x y":/z', BindEntry("/x y", "/z", ignore_missing=False, recursive=True)),
        ("'/a:b':/c", BindEntry("/a:b", "/c", ignore_missing=False, recursive=True)),
    ],
)
def test_bind_entry(text: str, entry: BindEntry) -> None:
    assert v.parse_bind_entry(text) == entry


def test_bind_entry_takes_whitespace_as_part_of_the_word() -> None:
    # For callers that split with split_words() first: '"/x y":/z' arrives as '/x y:/z'.
    (word,) = v.split_words('"/x y":/z')
    assert v.parse_bind_entry(word) == BindEntry("/x y", "/z", ignore_missing=False, recursive=True)
    # ...while in a whole value, whitespace separates entries, and "y" is no absolute path.
    assert reason(lambda: v.parse_bind_paths("/x y:/z")) == (
        "must be an absolute path (got relative path 'y')"
    )
    assert v.parse_bind_paths('"/x y":/z') == (v.parse_bind_entry(word),)


def test_bind_paths_whole_value() -> None:
    assert v.parse_bind_paths("/a  -/b:/c:norbind\t/d") == (
        BindEntry("/a", "/a", ignore_missing=False, recursive=True),
        BindEntry("/b", "/c", ignore_missing=True, recursive=False),
        BindEntry("/d", "/d", ignore_missing=False, recursive=True),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/a:/b:ro", "bind option must be 'rbind' or 'norbind' (got 'ro')"),
        ("/a:/b:rbind:x", "must be [-]SOURCE[:DESTINATION[:OPTIONS]] (too many ':')"),
        ("/a:", "must be an absolute path (got relative path '')"),
        ("a:/b", "must be an absolute path (got relative path 'a')"),
        (r"/a\n", "unknown escape '\\n' (only '\\:', '\\\\' and '\\ ' are allowed)"),
        ('"/a', 'unterminated " quote'),
        ("", "must not be empty"),
    ],
)
def test_bind_entry_invalid(text: str, message: str) -> None:
    assert reason(lambda: v.parse_bind_entry(text)) == message


bind_entries = st.builds(
    BindEntry, absolute_paths(), absolute_paths(), st.booleans(), st.booleans()
)


@given(st.lists(bind_entries, min_size=1, max_size=3))
def test_bind_entry_round_trip(entries: list[BindEntry]) -> None:
    assert v.parse_bind_entry(v.render_bind_entry(entries[0])) == entries[0]
    # Callers that split with split_words() and render with quote_word() get it back too.
    quoted = " ".join(v.quote_word(v.render_bind_entry(e)) for e in entries)
    assert [v.parse_bind_entry(word) for word in v.split_words(quoted)] == entries
    assert v.parse_bind_paths(" ".join(map(v.render_bind_entry, entries))) == tuple(entries)


def test_tmpfs_entry() -> None:
    assert v.parse_tmpfs_entry("/var") == TmpfsEntry("/var", "")
    assert v.parse_tmpfs_entry("/var:") == TmpfsEntry("/var", "")
    assert v.parse_tmpfs_entry("/var:ro") == TmpfsEntry("/var", "ro")  # systemd.exec(5)
    assert v.parse_tmpfs_entry("/tmp:size=10%") == TmpfsEntry("/tmp", "size=10%")
    assert v.parse_tmpfs_entry("/run:ro,size=10M,mode=0700") == TmpfsEntry(
        "/run", "ro,size=10M,mode=0700"
    )
    assert v.parse_tmpfs_entry("/x:nr_inodes=1k,uid=1000,gid=1000,noexec") == TmpfsEntry(
        "/x", "nr_inodes=1k,uid=1000,gid=1000,noexec"
    )


TMPFS_OPTIONS = (
    "mount option must be one of exec, nodev, noexec, nosuid, ro, rw,"
    " size=, nr_inodes=, mode=, uid=, gid="
)


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("/x:suid", "mount option 'suid' is refused (activator mounts tmpfs nosuid,nodev)"),
        ("/x:dev", "mount option 'dev' is refused (activator mounts tmpfs nosuid,nodev)"),
        ("/x:size=lots", "mount option size= has a bad value (got 'lots')"),
        ("/x:mode=0888", "mount option mode= has a bad value (got '0888')"),
        ("/x:nr_inodes=10%", "mount option nr_inodes= has a bad value (got '10%')"),
        ("/x:uid=4294967295", "mount option uid= has a bad value (got '4294967295')"),
        ("/x:ro,,rw", f"{TMPFS_OPTIONS} (got '')"),
        ("/x:huge=always", f"{TMPFS_OPTIONS} (got 'huge=always')"),
        ("/x:ro=1", f"{TMPFS_OPTIONS} (got 'ro=1')"),
        ("x:ro", "must be an absolute path (got relative path 'x')"),
    ],
)
def test_tmpfs_entry_invalid(word: str, message: str) -> None:
    assert reason(lambda: v.parse_tmpfs_entry(word)) == message


tmpfs_options = st.lists(
    st.sampled_from(["ro", "rw", "nosuid", "nodev", "noexec", "exec", "size=50%", "mode=1777"])
).map(",".join)


@given(st.builds(TmpfsEntry, absolute_paths("az09._- é"), tmpfs_options))
def test_tmpfs_entry_round_trip(entry: TmpfsEntry) -> None:
    assert v.parse_tmpfs_entry(v.render_tmpfs_entry(entry)) == entry


# --- Enumerations and standard streams ----------------------------------------------------------


ENUM_PARSERS: list[tuple[type[enum.Enum], Callable[[str], enum.Enum]]] = [
    (ServiceType, v.parse_service_type),
    (RestartPolicy, v.parse_restart_policy),
    (ProtectSystem, v.parse_protect_system),
    (ProtectHome, v.parse_protect_home),
    (BindIPv6Only, v.parse_bind_ipv6_only),
    (RuntimeDirectoryPreserve, v.parse_runtime_directory_preserve),
]


@pytest.mark.parametrize(("cls", "parse"), ENUM_PARSERS)
def test_enum_round_trip(cls: type[enum.Enum], parse: Callable[[str], enum.Enum]) -> None:
    for member in cls:
        assert parse(member.value) is member


def test_enum_values_are_systemds() -> None:
    assert [m.value for m in RestartPolicy] == [
        "no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always",
    ]  # fmt: skip
    assert v.parse_protect_home("read-only") is ProtectHome.READ_ONLY
    assert v.parse_bind_ipv6_only("ipv6-only") is BindIPv6Only.IPV6_ONLY


def test_enum_booleans() -> None:
    assert v.parse_protect_system("true") is ProtectSystem.YES
    assert v.parse_protect_system("0") is ProtectSystem.NO
    assert v.parse_protect_home("on") is ProtectHome.YES
    assert v.parse_runtime_directory_preserve("false") is RuntimeDirectoryPreserve.NO
    # socket_address_bind_ipv6_only_or_bool_from_string(): true is ipv6-only, false is both
    assert v.parse_bind_ipv6_only("yes") is BindIPv6Only.IPV6_ONLY
    assert v.parse_bind_ipv6_only("no") is BindIPv6Only.BOTH
    assert "must be one of" in reason(lambda: v.parse_restart_policy("yes"))


def test_enum_errors() -> None:
    assert reason(lambda: v.parse_protect_system("sometimes")) == (
        "must be one of 'no', 'yes', 'full', 'strict' (got 'sometimes')"
    )
    assert reason(lambda: v.parse_service_type("forking")) == (
        "not supported by activator (supported: 'simple', 'exec', 'oneshot', 'notify')"
    )
    assert reason(lambda: v.parse_service_type("Simple")).startswith("must be one of 'simple'")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("null", IOSpec("null")),
        ("tty-force", IOSpec("tty-force")),
        ("socket", IOSpec("socket")),
        ("file:/dev/zero", IOSpec("file", "/dev/zero")),
    ],
)
def test_standard_input(text: str, spec: IOSpec) -> None:
    assert v.parse_standard_input(text) == spec


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("inherit", IOSpec("inherit")),
        ("journal+console", IOSpec("journal+console")),
        ("kmsg", IOSpec("kmsg")),
        ("append:/var/log/x.log", IOSpec("append", "/var/log/x.log")),
        ("truncate:/tmp/a b", IOSpec("truncate", "/tmp/a b")),
    ],
)
def test_standard_output(text: str, spec: IOSpec) -> None:
    assert v.parse_standard_output(text) == spec


def test_standard_streams_invalid() -> None:
    assert reason(lambda: v.parse_standard_input("journal")) == (
        "must be one of 'null', 'tty', 'tty-force', 'tty-fail', 'socket', 'file:PATH'"
        " (got 'journal')"
    )
    assert reason(lambda: v.parse_standard_input("data")).startswith("not supported by activator")
    assert reason(lambda: v.parse_standard_output("fd:foo")).startswith("not supported")
    assert reason(lambda: v.parse_standard_output("append:x")) == (
        "must be an absolute path (got relative path 'x')"
    )
    assert reason(lambda: v.parse_standard_output("null:/x")).startswith("must be one of")
    assert reason(lambda: v.parse_standard_output("file")).startswith("must be one of")


INPUT_KINDS = ["null", "tty", "tty-force", "tty-fail", "socket"]
OUTPUT_KINDS = ["inherit", "null", "tty", "journal", "kmsg", "journal+console", "kmsg+console"]
PATH_KINDS = ["file", "append", "truncate"]
io_specs = st.builds(IOSpec, st.sampled_from(INPUT_KINDS + OUTPUT_KINDS)) | st.builds(
    IOSpec, st.sampled_from(PATH_KINDS), absolute_paths()
)


@given(io_specs)
def test_io_spec_round_trip(spec: IOSpec) -> None:
    text = v.render_io_spec(spec)
    if spec.kind in [*INPUT_KINDS, "file"]:
        assert v.parse_standard_input(text) == spec
    if spec.kind in [*OUTPUT_KINDS, "socket", *PATH_KINDS]:
        assert v.parse_standard_output(text) == spec


# --- Every parser: only ValueError, whatever the text ---------------------------------------------

PARSERS: list[Callable[[str], object]] = [
    v.parse_boolean,
    v.parse_timespan,
    v.parse_size,
    v.parse_memory_limit,
    v.parse_tasks_max,
    v.parse_cpu_quota,
    lambda t: v.parse_rlimit("LimitNOFILE", t),
    lambda t: v.parse_rlimit("LimitAS", t),
    lambda t: v.parse_rlimit("LimitCPU", t),
    v.parse_mode,
    lambda t: v.parse_integer(t, minimum=-5, maximum=5),
    v.parse_nice,
    v.parse_signal,
    lambda t: v.parse_listen(SocketKind.STREAM, t),
    v.parse_ip_prefixes,
    v.split_words,
    v.quote_word,
    lambda t: v.parse_user_name(t, allow_numeric=True),
    v.parse_env_assignment,
    v.validate_relative_directory,
    v.validate_absolute_path,
    v.parse_path_entry,
    v.parse_bind_paths,
    v.parse_tmpfs_entry,
    v.parse_protect_system,
    v.parse_service_type,
    v.parse_standard_input,
    v.parse_standard_output,
]

# Text with the characters the grammars care about, so that the property reaches deep branches.
syntax_text = st.text(st.sampled_from("0123456789.:%/@[]-+ \\\"'xuUsabcdefGKMmhinyt‰\t\0\udcff"))


long_numbers = st.builds(lambda tail: "0" * 4400 + tail, syntax_text)


@given(text=st.text() | syntax_text | long_numbers)
def test_parsers_raise_only_value_error(text: str) -> None:
    # One property over all parsers: a hypothesis run per parser would cost seconds.
    wrong = []
    for index, parse in enumerate(PARSERS):
        try:
            parse(text)
        except ValueError as error:
            if type(error) is not ValueError or not str(error):
                wrong.append(f"PARSERS[{index}] raised {error!r}")
    assert wrong == []


def test_huge_percentages_are_refused_with_the_range() -> None:
    with pytest.raises(ValueError) as e:
        v.parse_cpu_quota("1" * 5000 + "%")
    assert str(e.value).startswith("must be 0%..21474836.47% (got ")
