"""lbd --packet-source afxdp --steering nftables (issue 19): the AF_XDP source's NFQUEUE fallback
as lbd's own nftables table `ip lbd-q<N>` (lb/nftsteer.py), at --steer-hook prerouting and input.

Explicit, whatever LB_TEST_STEERING says: the table is there while lbd runs (no iptables raw
chain, no ip set), a director-local client's connections to a FULLNAT VIP, which never cross an
XDP hook, are queued by it and balanced; the steering watch puts the table back after it is
deleted; the table goes when lbd exits, and after kill -9 it stays (queue bypass) until the next
lbd of the queue takes it over and removes it at its own exit. Fragments through the fallback:
tests/netns/test_fragments.py under `make test-netns-afxdp` (lbd's default steering).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import time
from collections.abc import Iterator

import pytest
from conftest import NFT, QUEUE_NUM, Lbd, LbdError, iptables_leftovers, running_lbd

# ftopo is test_fullnat's module fixture (its own FULLNAT topology), used here too.
from test_afxdp import BPF_OBJECT, full_checksums, skip_if_unsupported  # type: ignore[import-not-found]
from test_fullnat import PORT, ftopo, fullnat_service  # type: ignore[import-not-found]  # noqa: F401

from lb.testbed import client
from lb.testbed.topology import Topology

TABLE = f"lbd-q{QUEUE_NUM}"
HEAL_TIMEOUT_S = 10.0  # the watch checks the fallback's rules once a second under afxdp
DETACH_TIMEOUT_S = 10.0


def _args(t: Topology, hook: str) -> list[str]:
    d = t.director
    return ["--packet-source", "afxdp", "--xdp-interface", d.iface("lan").ifname, "--xdp-interface",
            d.iface("back").ifname, "--steering", "nftables", "--steer-hook", hook]


@pytest.fixture(params=["prerouting", "input"])
def hook(request: pytest.FixtureRequest) -> str:
    if not BPF_OBJECT.exists():
        pytest.skip(f"{BPF_OBJECT} not built (`make build` compiles native/bpf/lb_xdp.bpf.c)")
    for tool in ("ethtool", NFT):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (ethtool: the veths' checksum offload; nft: lbd's table)")
    return str(request.param)


def table_text(t: Topology) -> str | None:
    proc = t.director.exec([NFT, "list", "table", "ip", TABLE], check=False)
    return proc.stdout if proc.returncode == 0 else None


def xdp_progs(t: Topology) -> list[str]:
    out = t.director.ip("-d", "link", "show").stdout
    return re.findall(r"prog/xdp id \d+", out)


def local_client_balanced(lbd: Lbd, t: Topology, n: int = 4) -> None:
    """n connections from a process on the director to the VIP: through lo, so through lbd's table
    (its queue), never through XDP; every one answered, spread over the real servers."""
    before = lbd.ok("counters")["nfq"]["packets"]
    replies = client.fresh_gets(t.director.netns, t.vip, PORT, n, timeout=5.0)
    assert all(r.ok for r in replies), ([r.error for r in replies if not r.ok], lbd.log_tail())
    assert len({r.server for r in replies}) == len(t.reals), [r.server for r in replies]
    assert lbd.ok("counters")["nfq"]["packets"] - before >= n, "the SYNs did not come through lbd's queue"


@contextlib.contextmanager
def afxdp_lbd(t: Topology, hook: str) -> Iterator[Lbd]:
    with full_checksums(t):
        try:
            with running_lbd(t, "c", args=_args(t, hook)) as d:
                yield d
        except LbdError as exc:
            skip_if_unsupported(exc)
            raise


def test_afxdp_fallback_is_lbds_nft_table(ftopo: Topology, hook: str) -> None:  # noqa: F811
    t = ftopo
    with afxdp_lbd(t, hook) as d:
        ping = d.ok("ping")
        assert ping["packet_source"] == "afxdp" and ping["steering"] == "nftables", ping
        assert ping["steering_hook"] == hook and ping["afxdp"]["nfqueue_fallback"], ping
        fullnat_service(d, t)
        text = table_text(t)
        assert text is not None, f"no table ip {TABLE} under afxdp:\n{d.log_tail()}"
        first = "input" if hook == "input" else "pre"
        assert re.search(rf"chain {first} \{{\s*type filter hook {'input' if hook == 'input' else 'prerouting'}",
                         text), text
        assert re.search(r"^\s*(queue |xt target)", text, re.M), text
        assert t.vip in text, text  # its address set holds the VIP
        # nothing of lbd in iptables' raw table or in ip sets: the table is the whole fallback
        assert not [line for line in iptables_leftovers(t.director) if not line.startswith("nft: ")], \
            iptables_leftovers(t.director)
        assert len(xdp_progs(t)) == 2, t.director.ip("-d", "link", "show").stdout
        local_client_balanced(d, t)
        # clients' traffic still goes through XDP (the program redirected their packets)
        replies = client.fresh_gets(t.client.netns, t.vip, PORT, 4, timeout=5.0)
        assert all(r.ok for r in replies), ([r.error for r in replies if not r.ok], d.log_tail())
        assert d.ok("counters")["afxdp"]["program"]["redirected"] >= 4 * 3
        # the steering watch puts a deleted table back, and the fallback works again
        t.director.exec([NFT, "delete", "table", "ip", TABLE])
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while table_text(t) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert table_text(t) is not None, f"table ip {TABLE} not restored:\n{d.log_tail()}"
        # the watch reports its repair once the repair is done: after the table is back (the queue
        # rule is written into it next), so the line can trail the table by a moment
        while f"nft table ip {TABLE} gone" not in d.log_tail(20000) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"nft table ip {TABLE} gone" in d.log_tail(20000), d.log_tail()
        local_client_balanced(d, t)
    # running_lbd checked lbd's exit status and that nothing (table included) is left
    assert table_text(t) is None
    assert xdp_progs(t) == []


def test_afxdp_nft_table_after_kill9_is_taken_over_and_removed(ftopo: Topology, hook: str) -> None:  # noqa: F811
    """kill -9: the programs leave with lbd's descriptors, the table stays (its queue rule bypasses:
    packets reach the kernel); the next lbd of the queue adopts it and removes it at its exit."""
    t = ftopo
    with full_checksums(t):
        d = Lbd(t, "c", args=_args(t, hook))
        try:
            try:
                d.start()
            except LbdError as exc:
                skip_if_unsupported(exc)
                raise
            fullnat_service(d, t)
            local_client_balanced(d, t)
            assert d.stop(signal.SIGKILL) == -signal.SIGKILL
            deadline = time.monotonic() + DETACH_TIMEOUT_S
            while xdp_progs(t) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert xdp_progs(t) == [], "XDP programs left after kill -9"
            text = table_text(t)
            assert text is not None and "bypass" in text, f"table ip {TABLE} after kill -9:\n{text}"
        finally:
            if d.running():
                d.stop(signal.SIGKILL)
            d.cleanup()
        with running_lbd(t, "c", args=_args(t, hook)) as again:
            assert table_text(t) is not None
            fullnat_service(again, t)
            local_client_balanced(again, t)
    assert table_text(t) is None and iptables_leftovers(t.director) == []
