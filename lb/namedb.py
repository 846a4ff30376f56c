"""Host and service names from /etc/hosts and /etc/services only, as glibc's `files` backend gives
them: never DNS (a listing or a restore must not hang on a resolver).

One job: the two files, each read once per NameDB on first use, and the lookups ipvsadm makes
(address -> host name, host name -> IPv4 address, port -> service name, service name -> port).
lb.ipvsadm_fmt prints names with it (non-numeric listings); lb.lbadm and lb.config_ipvsadm parse
host and service names with it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress

HOSTS_PATH = "/etc/hosts"
SERVICES_PATH = "/etc/services"


class NameDB:
    """Host and service names as glibc's `files` backend would give them.

    ipvsadm calls gethostbyaddr/getservbyport; we deliberately never touch DNS
    (a listing must not hang on a resolver), so only the two files are read. Each lookup is one
    dict access (a listing of 10,000 services makes 30,000 of them): the first entry of a file
    that matches wins, as glibc's scan of the file would find it.
    """

    def __init__(self, hosts_path: str = HOSTS_PATH, services_path: str = SERVICES_PATH) -> None:
        self._hosts_path = hosts_path
        self._services_path = services_path
        self._hosts: list[tuple[str, list[str]]] | None = None
        self._services: list[tuple[str, int, str, list[str]]] | None = None
        self._name_by_addr: dict[object, str] | None = None
        self._ipv4_by_name: dict[str, str] | None = None
        self._name_by_port: dict[tuple[int, str], str] | None = None
        self._port_by_name: dict[tuple[str, str], int] | None = None

    def host_for_addr(self, addr: str) -> str | None:
        wanted = _normalize_ip(addr)
        if wanted is None:
            return None
        if self._name_by_addr is None:
            self._name_by_addr = {}
            for entry_addr, names in self._host_entries():
                key = _normalize_ip(entry_addr)
                if key is not None:
                    self._name_by_addr.setdefault(key, names[0])
        return self._name_by_addr.get(wanted)

    def ipv4_for_host(self, name: str) -> str | None:
        if self._ipv4_by_name is None:
            self._ipv4_by_name = {}
            for entry_addr, names in self._host_entries():
                parsed = _normalize_ip(entry_addr)
                if parsed is not None and parsed.version == 4:
                    for n in names:
                        self._ipv4_by_name.setdefault(n.lower(), str(parsed))
        return self._ipv4_by_name.get(name.lower())

    def service_for_port(self, port: int, proto: str) -> str | None:
        if self._name_by_port is None:
            self._name_by_port = {}
            for name, entry_port, entry_proto, _aliases in self._service_entries():
                self._name_by_port.setdefault((entry_port, entry_proto), name)
        return self._name_by_port.get((port, proto))

    def port_for_service(self, service: str, proto: str) -> int | None:
        if self._port_by_name is None:
            self._port_by_name = {}
            for name, entry_port, entry_proto, aliases in self._service_entries():
                for word in (name, *aliases):
                    self._port_by_name.setdefault((word, entry_proto), entry_port)
        return self._port_by_name.get((service, proto))

    def _host_entries(self) -> list[tuple[str, list[str]]]:
        if self._hosts is None:
            self._hosts = []
            for fields in _config_lines(self._hosts_path):
                if len(fields) >= 2:
                    self._hosts.append((fields[0], fields[1:]))
        return self._hosts

    def _service_entries(self) -> list[tuple[str, int, str, list[str]]]:
        if self._services is None:
            self._services = []
            for fields in _config_lines(self._services_path):
                parsed = _parse_service_line(fields)
                if parsed is not None:
                    self._services.append(parsed)
        return self._services


class NumericNames(NameDB):
    """A NameDB that knows no names (for -n and for tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._hosts = []
        self._services = []


def _config_lines(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return []
    return [line.split("#", 1)[0].split() for line in text.splitlines()]


def _parse_service_line(fields: list[str]) -> tuple[str, int, str, list[str]] | None:
    if len(fields) < 2 or "/" not in fields[1]:
        return None
    port_text, proto = fields[1].split("/", 1)
    if not port_text.isdigit():
        return None
    return fields[0], int(port_text), proto.lower(), fields[2:]


def _normalize_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    import ipaddress  # only for names (not -n, not numeric command lines): ~3 ms of lbadm's start-up

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
