"""`list` with `"brief": true` (lbadm's text listings, issue 15): the full answer without the
destination diagnosis and synproxy_conf, counters only with `"stats": true`, and every text
listing printed from it byte for byte as from the full answer."""

from __future__ import annotations

from typing import Any

import pytest

from lb.director import Director
from lb.ipvsadm_fmt import ListFormat, format_laddrs, format_list, format_one_service, format_save
from lb.lbadm import parse_args
from lb.namedb import NumericNames
from test_director import make_engine

DIAGNOSIS = ("syn_retrans", "handshakes", "stalled", "stalled_episodes", "l2")


@pytest.fixture(params=["c", "python"])
def director(request: pytest.FixtureRequest) -> Director:
    d = Director(make_engine(request.param), rules=None, resolver=None)
    for port, sched, extra in ((80, "rr", {}), (443, "sh", {"persistent": 300, "sched_flags": ["sh-port"]})):
        svc = {"proto": "tcp", "addr": "10.0.0.1", "port": port}
        d.handle("add_service", {**svc, "sched": sched, **extra})
        for addr, fwd in (("192.168.0.2", "route"), ("10.1.0.3", "tunnel"), ("200.0.0.1", "masq")):
            d.handle("add_dest", {"service": svc, "dest": {"addr": addr, "port": 8080, "fwd": fwd, "weight": 3,
                                                           "u_threshold": 0, "l_threshold": 0}})
    d.handle("add_service", {"fwmark": 7, "sched": "wlc"})
    return d


def _without(listing: dict[str, Any], *, stats: bool) -> dict[str, Any]:
    """The full listing as the brief one should read."""
    services = []
    for svc in listing["services"]:
        svc = {k: v for k, v in svc.items() if k != "synproxy_conf" and (stats or k != "stats")}
        svc["dests"] = [{k: v for k, v in dest.items() if k not in DIAGNOSIS and (stats or k != "stats")}
                        for dest in svc["dests"]]
        services.append(svc)
    return {**listing, "services": services}


@pytest.mark.parametrize("stats", [False, True])
def test_brief_is_the_full_listing_without_what_ipvsadm_does_not_print(director: Director, stats: bool) -> None:
    full = director.handle("list", {})
    assert all(k in dest for svc in full["services"] for dest in svc["dests"] for k in DIAGNOSIS)
    args = {"brief": True, "stats": True} if stats else {"brief": True}
    assert director.handle("list", args) == _without(full, stats=stats)
    one = {"proto": "tcp", "addr": "10.0.0.1", "port": 443}
    assert director.handle("list", {**args, "service": one}) == _without(director.handle("list", {"service": one}), stats=stats)


@pytest.mark.parametrize(
    "argv",
    [["-L", "-n"], ["-L", "-n", "--stats"], ["-L", "-n", "--rate", "--exact"], ["-L", "-n", "--thresholds"],
     ["-L", "-n", "--persistent-conn"], ["-L", "-n", "--tun-info"], ["-L", "-n", "--nosort"], ["-S", "-n"],
     ["-L", "-n", "-t", "10.0.0.1:443"], ["-G"]],
)
def test_text_listings_print_the_same_from_the_brief_answer(director: Director, argv: list[str]) -> None:
    inv = parse_args(argv, env={})
    assert inv.request is not None and inv.request.args.get("brief") is True
    assert inv.request.args.get("stats", False) == (inv.fmt.stats or inv.fmt.rate)
    full_args = {k: v for k, v in inv.request.args.items() if k not in ("brief", "stats")}
    names = NumericNames()

    def text(result: dict[str, Any]) -> str:
        if argv[0] == "-S":
            return format_save(result, numeric=True, names=names)
        if argv[0] == "-G":
            return format_laddrs(result)
        if "-t" in argv:
            return format_one_service(result, inv.fmt, names)
        return format_list(result, inv.fmt, names)

    assert text(director.handle("list", inv.request.args)) == text(director.handle("list", full_args))
    assert text(director.handle("list", full_args)) != ""


def test_json_output_asks_for_the_full_listing() -> None:
    inv = parse_args(["-L", "-n", "--json"], env={})
    assert inv.request is not None and inv.request.args == {}
    assert isinstance(inv.fmt, ListFormat)
