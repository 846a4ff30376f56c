"""lb/paths.py: one default directory (socket, state) per network namespace, the same for lbd and lbadm.

Namespace files are stood in for by plain files: what identifies a namespace is (st_dev, st_ino),
and a hard link shares both, as a /run/netns/NAME bind mount shares the nsfs inode.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lb import ctlclient, daemon, paths


@pytest.fixture
def ns_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "names").mkdir()
    files = {"self": tmp_path / "self", "init": tmp_path / "init", "names": tmp_path / "names"}
    files["self"].write_text("ours")
    files["init"].write_text("initial")
    return files


def _current(f: dict[str, Path], initial: tuple[Path, ...] | None = None) -> paths.Netns:
    return paths.current_netns(f["self"], (f["init"],) if initial is None else initial, f["names"])


def test_the_initial_namespace_keeps_todays_paths(ns_files: dict[str, Path]) -> None:
    ns = paths.current_netns(ns_files["init"], (ns_files["init"],), ns_files["names"])
    assert ns.kind == "initial"
    assert paths.default_socket_path(ns) == "/run/lbd/lbd.sock" == ctlclient.DEFAULT_SOCKET_PATH
    assert paths.runtime_dir(ns) == Path("/run/lbd")


def test_a_named_namespace_gets_its_own_directory(ns_files: dict[str, Path]) -> None:
    os.link(ns_files["self"], ns_files["names"] / "director")
    (ns_files["names"] / "other").write_text("someone else's")
    ns = _current(ns_files)
    assert (ns.kind, ns.name) == ("named", "director")
    assert paths.default_socket_path(ns) == "/run/lbd/netns/director/lbd.sock"
    assert ns.describe() == "network namespace director"


def test_of_several_names_the_first_sorted_one(ns_files: dict[str, Path]) -> None:
    os.link(ns_files["self"], ns_files["names"] / "zeta")
    os.link(ns_files["self"], ns_files["names"] / "alpha")
    assert _current(ns_files).name == "alpha"


def test_the_initial_namespace_wins_over_a_name_bound_to_it(ns_files: dict[str, Path]) -> None:
    os.link(ns_files["init"], ns_files["names"] / "host")
    assert paths.current_netns(ns_files["init"], (ns_files["init"],), ns_files["names"]).kind == "initial"


def test_an_unreadable_pid1_falls_back_to_the_next_candidate(ns_files: dict[str, Path]) -> None:
    missing = ns_files["names"].parent / "pid1-unreadable"
    ns = paths.current_netns(ns_files["self"], (missing, ns_files["self"]), ns_files["names"])
    assert ns.kind == "initial"


def test_an_unnamed_namespace_is_named_by_inode_and_cookie(ns_files: dict[str, Path]) -> None:
    ns = _current(ns_files)
    assert ns.kind == "unnamed" and ns.inode == os.stat(ns_files["self"]).st_ino
    unnamed = paths.Netns("unnamed", 4026532238, cookie=4585)
    assert paths.runtime_dir(unnamed) == Path("/run/lbd/netns-unnamed/4026532238-4585")
    # Without SO_NETNS_COOKIE (kernels before 5.14) the inode alone.
    assert paths.runtime_dir(paths.Netns("unnamed", 7)) == Path("/run/lbd/netns-unnamed/7")


def test_nothing_readable_counts_as_the_initial_namespace(ns_files: dict[str, Path]) -> None:
    # lbd and lbadm of one unprivileged user both land here, so they still agree.
    assert _current(ns_files, initial=(ns_files["names"].parent / "nope",)).kind == "initial"


def test_this_process_namespace_is_found() -> None:
    if not Path("/proc/self/ns/net").exists():
        pytest.skip("no /proc/self/ns/net on this system")
    ns = paths.current_netns()
    assert ns.inode == os.stat("/proc/self/ns/net").st_ino


def test_explicit_socket_and_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "default_socket_path", lambda ns=None: "/run/lbd/netns/d1/lbd.sock")
    assert ctlclient.resolve_socket_path(None, {}) == "/run/lbd/netns/d1/lbd.sock"
    assert ctlclient.resolve_socket_path(None, {"LBD_SOCKET": "/env.sock"}) == "/env.sock"
    assert ctlclient.resolve_socket_path("/flag.sock", {"LBD_SOCKET": "/env.sock"}) == "/flag.sock"


def test_lbd_derives_socket_and_state_dir_like_lbadm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LBD_SOCKET", raising=False)
    monkeypatch.setattr(paths, "default_socket_path", lambda ns=None: "/run/lbd/netns/d1/lbd.sock")
    args = daemon.parse_args([])
    assert daemon.socket_path(args.socket) == "/run/lbd/netns/d1/lbd.sock"
    assert args.state_dir == "/run/lbd/netns/d1"
    assert daemon.parse_args(["--state-dir", "/srv/lbd"]).state_dir == "/srv/lbd"
