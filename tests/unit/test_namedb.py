"""lb/namedb.py: /etc/hosts and /etc/services lookups as glibc's `files` backend answers them
(the first matching line wins), now from indexes built once."""

from __future__ import annotations

from pathlib import Path

from lb.namedb import NameDB, NumericNames

HOSTS = """\
127.0.0.1   localhost
10.0.0.1    web1 Web-Alias  # comment
10.0.0.1    second-name-of-web1
010.0.0.2   bad-octal
::1         localhost6 ip6-localhost
10.0.0.3    WEB1
not-an-ip   junk
fe80::1     linklocal
"""
SERVICES = """\
http        80/tcp      www www-http    # WorldWideWeb HTTP
http        80/udp
www-alt     8080/tcp    www
https       443/tcp
broken      x/tcp
"""


def _db(tmp_path: Path) -> NameDB:
    (tmp_path / "hosts").write_text(HOSTS)
    (tmp_path / "services").write_text(SERVICES)
    return NameDB(str(tmp_path / "hosts"), str(tmp_path / "services"))


def test_addresses_to_names_first_line_wins(tmp_path: Path) -> None:
    db = _db(tmp_path)
    assert db.host_for_addr("10.0.0.1") == "web1"
    assert db.host_for_addr("0:0::1") == "localhost6"  # compared as addresses, not as text
    assert db.host_for_addr("fe80:0::1") == "linklocal"
    assert db.host_for_addr("10.0.0.2") is None  # 010.0.0.2 is no address
    assert db.host_for_addr("10.0.0.9") is None
    assert db.host_for_addr("junk") is None


def test_names_to_ipv4_case_blind_first_line_wins(tmp_path: Path) -> None:
    db = _db(tmp_path)
    assert db.ipv4_for_host("WEB1") == "10.0.0.1"
    assert db.ipv4_for_host("web-alias") == "10.0.0.1"
    assert db.ipv4_for_host("localhost6") is None  # IPv6 only
    assert db.ipv4_for_host("junk") is None


def test_services_by_port_and_by_name_or_alias(tmp_path: Path) -> None:
    db = _db(tmp_path)
    assert db.service_for_port(80, "tcp") == "http"
    assert db.service_for_port(80, "udp") == "http"
    assert db.service_for_port(8080, "tcp") == "www-alt"
    assert db.service_for_port(443, "udp") is None
    assert db.port_for_service("www", "tcp") == 80  # an alias of the first line before the second's
    assert db.port_for_service("www-alt", "tcp") == 8080
    assert db.port_for_service("WWW", "tcp") is None  # service names are case-sensitive
    assert db.port_for_service("https", "udp") is None
    assert db.port_for_service("broken", "tcp") is None


def test_numeric_names_know_nothing() -> None:
    db = NumericNames()
    assert db.host_for_addr("127.0.0.1") is None and db.service_for_port(80, "tcp") is None
    assert db.ipv4_for_host("localhost") is None and db.port_for_service("http", "tcp") is None
