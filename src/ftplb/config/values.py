"""Reading one TOML value: addresses, ports and ranges, and a table whose
unknown keys are rejected. Every error names the field and the reason."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ftplb.config.model import HostPort, PortRange
from ftplb.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C", bound=str)

# Used with fullmatch: `$` would also match before a final newline. [0-9], not
# \d: \d (and str.isdigit) take any Unicode digit, and int() reads them.
_PORT = re.compile(r"[0-9]{1,5}")
_PORT_RANGE = re.compile(r"[ \t]*([0-9]{1,5})[ \t]*(?:-[ \t]*([0-9]{1,5})[ \t]*)?")
HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9-]{1,63})*")
BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCOPE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_ip(text: str) -> str:
    """A literal IPv4 or IPv6 address, normalised; ValueError otherwise."""
    address = ipaddress.ip_address(text.strip("[]"))
    # ipaddress takes any text after '%' as an IPv6 scope id (a newline too).
    scope = getattr(address, "scope_id", None)
    if scope is not None and not _SCOPE_ID.fullmatch(scope):
        raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address")
    return str(address)


def is_ip(text: str) -> bool:
    """Whether `text` is an IP address as it stands (a host name is not)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_port_range(text: str) -> PortRange:
    """'A-B' or 'A' with 1 <= A <= B <= 65535; ValueError otherwise."""
    m = _PORT_RANGE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a port range like 30000-30099")
    first = int(m.group(1))
    last = int(m.group(2) or first)
    if not 1 <= first <= 65535 or not 1 <= last <= 65535:
        raise ValueError(f"{text}: ports must be between 1 and 65535")
    if first > last:
        raise ValueError(f"{text}: the first port is above the last")
    return PortRange(first, last)


def parse_host_port(text: str, *, allow_hostname: bool = False) -> HostPort:
    """'1.2.3.4:21', '[::1]:21' (or 'name:21' when allowed); ValueError otherwise."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} is not HOST:PORT (write IPv6 as [addr]:port)")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be between 1 and 65535")
    try:
        host = parse_ip(host)
    except ValueError:
        if not (allow_hostname and HOSTNAME.fullmatch(host)):
            kind = "an IP address or host name" if allow_hostname else "an IP address"
            raise ValueError(f"{text!r}: {host!r} is not {kind}") from None
    return HostPort(host, int(port))


class Table:
    """One TOML table being read: tracks the keys used to reject the rest."""

    def __init__(self, file: str, prefix: str, data: object) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, "must be a table")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}.{key}" if self.prefix else key, reason)

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML keeps them apart, so do we.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_kind_name(kinds)}, got {value!r}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return value  # type: ignore[no-any-return]

    def parsed(self, key: str, parse: Callable[[str], T], default: T) -> T:
        text = self.get(key, str, None)
        if text is None:
            return default
        try:
            return parse(text)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def path(self, key: str, default: str) -> str:
        """A file name; a NUL in it would make os.access() and open() raise ValueError."""
        value = self.get(key, str, default)
        if "\0" in value:
            raise self.error(key, f"{value!r} contains a NUL character")
        return value

    def choice(self, key: str, choices: tuple[C, ...], default: C) -> C:
        """One of `choices` (a tuple of Literal strings: mypy then checks every use)."""
        value = self.get(key, str, default)
        for choice in choices:
            if value == choice:
                return choice
        raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")

    def number(
        self, key: str, default: float, *, low: float, high: float, integer: bool = False
    ) -> Any:
        value = self.get(key, int if integer else (int, float), default)
        if not low <= value <= high:
            raise self.error(key, f"{value} is out of range ({low:g} to {high:g})")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds if not (k is int and float in kinds))
