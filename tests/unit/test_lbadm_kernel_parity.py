"""Where lbadm differed from Debian's ipvsadm 1.31 on kernel IPVS 6.1 (issue 13, "Also"), against
lbd's real request dispatch (both engines):

- `-p` without a value is ipvsadm's default persistence timeout, 360 s;
- `-w` takes any non-negative int (the kernel's limit is INT_MAX), e.g. 70000;
- `-x 10 -y 20` exits 255 with the kernel's errno text, "Numerical result out of range";
- `-b` is ipvsadm's --sched-flags on -A/-E and DPVS's FULLNAT on -a/-e: scheduler flags are kept,
  listed and saved as ipvsadm writes them, so `ipvsadm -S -n | lbadm -R` works and `lbadm -S`
  is what `ipvsadm -R` reads back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lb.engine import Engine
from lb.lbadm import parse_args
from lb.model import ServiceKey, ServiceSpec
from lb.namedb import NumericNames
from line_server import engine_of_kind, lbadm, served_director

VIP = "10.0.0.1"


@pytest.fixture(params=["c", "python"])
def lbd(request: pytest.FixtureRequest) -> Iterator[str]:
    with served_director(engine_of_kind(request.param)) as (path, _):
        yield path


def test_persistent_without_a_value_is_ipvsadms_360_seconds(lbd: str) -> None:
    assert lbadm(lbd, "-A", "-t", f"{VIP}:80", "-s", "rr", "-p") == (0, "", "")
    assert lbadm(lbd, "-S", "-n")[1] == f"-A -t {VIP}:80 -s rr -p 360\n"


def test_any_non_negative_int_weight(lbd: str) -> None:
    assert lbadm(lbd, "-A", "-t", f"{VIP}:80", "-s", "wlc")[0] == 0
    assert lbadm(lbd, "-a", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-w", "70000") == (0, "", "")
    assert lbadm(lbd, "-a", "-t", f"{VIP}:80", "-r", "10.0.0.3", "-w", "2147483647") == (0, "", "")
    saved = lbadm(lbd, "-S", "-n")[1]
    assert "-r 10.0.0.2:80 -g -w 70000\n" in saved and "-r 10.0.0.3:80 -g -w 2147483647\n" in saved
    assert lbadm(lbd, "-e", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-w", "2147483648") == (2, "", "illegal weight specified\n")
    assert lbadm(lbd, "-e", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-w", "-1") == (2, "", "illegal weight specified\n")


def test_lower_threshold_above_upper_is_the_kernels_erange(lbd: str) -> None:
    assert lbadm(lbd, "-A", "-t", f"{VIP}:80", "-s", "rr")[0] == 0
    assert lbadm(lbd, "-a", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-x", "10", "-y", "20") == \
        (255, "", "Numerical result out of range\n")
    assert lbadm(lbd, "-S", "-n")[1] == f"-A -t {VIP}:80 -s rr\n"  # nothing was added


def test_b_is_sched_flags_on_services_and_fullnat_on_servers() -> None:
    names = NumericNames()
    svc = parse_args(["-A", "-t", f"{VIP}:80", "-s", "rr", "-b", "flag-1,flag-3"], env={}, names=names)
    assert svc.request is not None and svc.request.args["sched_flags"] == ["flag-1", "flag-3"]
    clustered = parse_args(["-Eb", "flag-2", "-t", f"{VIP}:80"], env={}, names=names)
    assert clustered.request is not None and clustered.request.args["sched_flags"] == ["flag-2"]
    dest = parse_args(["-a", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-b", "-w", "3"], env={}, names=names)
    assert dest.request is not None and dest.request.args["dest"]["fwd"] == "fullnat"


# What `ipvsadm -S -n` prints for a table with scheduler flags (ipvsadm.c print_service_entry).
IPVSADM_SAVE = (
    f"-A -t {VIP}:80 -s rr -b flag-1,flag-3\n"
    f"-a -t {VIP}:80 -r 10.0.0.3:80 -g -w 2\n"
    f"-a -t {VIP}:80 -r 10.0.0.2:80 -i -w 1 --tun-type ipip\n"
    f"-A -u {VIP}:53 -s wlc -p 360 -b flag-2\n"
    f"-a -u {VIP}:53 -r 10.0.0.4:53 -g -w 70000\n"
)
# After `ipvsadm -R` of it the kernel lists each service's destinations most recently added first,
# so its -S has them the other way round; lbd's too.
SAVED_BACK = (
    f"-A -t {VIP}:80 -s rr -b flag-1,flag-3\n"
    f"-a -t {VIP}:80 -r 10.0.0.2:80 -i -w 1 --tun-type ipip\n"
    f"-a -t {VIP}:80 -r 10.0.0.3:80 -g -w 2\n"
    f"-A -u {VIP}:53 -s wlc -p 360 -b flag-2\n"
    f"-a -u {VIP}:53 -r 10.0.0.4:53 -g -w 70000\n"
)


def test_ipvsadm_save_with_sched_flags_restores_and_saves_back(lbd: str) -> None:
    assert lbadm(lbd, "-R", stdin=IPVSADM_SAVE) == (0, "", "")
    assert lbadm(lbd, "-S", "-n")[1] == SAVED_BACK  # what ipvsadm -R reads back
    listing = lbadm(lbd, "-L", "-n")[1]
    assert f"TCP  {VIP}:80 rr (flag-1,flag-3)\n" in listing and f"UDP  {VIP}:53 wlc (flag-2) persistent 360\n" in listing
    # -E replaces the whole service, flags included, as ipvsadm's -E does.
    assert lbadm(lbd, "-E", "-t", f"{VIP}:80", "-s", "wlc") == (0, "", "")
    assert lbadm(lbd, "-S", "-n")[1].splitlines()[0] == f"-A -t {VIP}:80 -s wlc"


def test_sh_flags_are_honoured_and_listed_as_ipvsadm_does(lbd: str) -> None:
    """sh-port / sh-fallback go to lbd; `-s sh -b flag-3` keeps the bit that ipvsadm 1.31 prints no
    name for (its print_sched_flags, read from Debian's binary: `sh ()` in -L, `-b ` in -S)."""
    assert lbadm(lbd, "-A", "-t", f"{VIP}:80", "-s", "sh", "-b", "sh-port,sh-fallback") == (0, "", "")
    assert lbadm(lbd, "-A", "-t", f"{VIP}:81", "-s", "sh", "-b", "flag-2,flag-3") == (0, "", "")
    assert lbadm(lbd, "-A", "-t", f"{VIP}:82", "-s", "sh", "-b", "flag-3") == (0, "", "")
    listing = lbadm(lbd, "-L", "-n")[1]
    assert f"TCP  {VIP}:80 sh (sh-fallback,sh-port)\n" in listing
    assert f"TCP  {VIP}:81 sh (sh-port)\n" in listing
    assert f"TCP  {VIP}:82 sh ()\n" in listing
    assert lbadm(lbd, "-S", "-n")[1].splitlines() == [
        f"-A -t {VIP}:80 -s sh -b sh-fallback,sh-port", f"-A -t {VIP}:81 -s sh -b sh-port",
        f"-A -t {VIP}:82 -s sh -b "]
    # ipvsadm's own checks come first: a flag of another scheduler is a usage error.
    assert lbadm(lbd, "-A", "-t", f"{VIP}:83", "-s", "rr", "-b", "sh-port") == \
        (2, "", "incompatible scheduler flag `sh-port'\n")


@pytest.mark.parametrize("kind", ["c", "python"])
def test_both_engines_keep_the_flag_bits(kind: str) -> None:
    engine: Engine = engine_of_kind(kind)
    key = ServiceKey(6, VIP, 80)
    engine.add_service(ServiceSpec(key, "rr", sched_flags=5))
    assert engine.services()[0].spec.sched_flags == 5
    engine.edit_service(ServiceSpec(key, "rr", sched_flags=2))
    assert engine.services()[0].spec.sched_flags == 2
