"""What a conformance scenario is: data only (no I/O), read on the host and in the guest.

A Scenario is an ipvsadm rules file plus a list of steps. The runner (runner.py) plays it on
kernel IPVS (`ipvsadm ...` in one director namespace) and on lbd (`lbadm ...` in another
director namespace with the same addresses), records what each system did, and the test
asserts both records are identical.

Text in `rules` and in admin commands is a template: {vip} is the scenario's own virtual
address, {vip2}..{vipN} its extra ones (Scenario.extra_vips, for what hashes the destination
address), {rs1}..{rs4} the real servers, {nrs1}..{nrs4} the same real servers' NAT addresses
(they answer TCP and UDP on ports 80 and 8080 there and route their replies through the
director: runner.spec()), {c1}..{c44} the client's addresses. The same rendered
text goes to `ipvsadm` and to `lbadm`.

Steps:
- Admin("-e -t {vip}:80 -r {rs2}:80 -g -w 0"): one command of the admin tool; its exit status,
  stdout and stderr are recorded. `stdin` feeds it (for -R), possibly the text another step
  printed: Output("save", system="kernel") is what kernel IPVS's tool printed in the step named
  "save" of this scenario (the scenario's `first` system must be that one).
- Listing("-Ln"): a listing, read until two reads in a row agree (packets in flight have
  landed), then normalised (compare.py: -Lnc keeps this scenario's VIP only, sorted, expiry
  times masked).
- Connect(n): n TCP connections one after another, each opened, answered and closed by the
  client (client FIN first) before the next. Records the real server that answered each one.
- Hold(n, group): n TCP connections opened one after another and kept open; Release(group)
  closes them (client FIN first).
- Udp(n): n datagrams, each from a new source port; records who answered ("refused:none": the
  director had no real server and said so with ICMP port unreachable). With same_port=True
  each client sends all of its datagrams of the step from one port: one flow (what -o changes).
  Udp(n, size=3000): datagrams larger than the MTU (fragmented by the client, answered as large);
  the outcome says whether both arrived whole ("rs1 whole"). Udp(n, any_source=True): the client
  takes an answer from any source and names it when it is not the VIP ("rs1 from nrs1:80").
- Wait(seconds): time passes (at most 60 s), e.g. for entries to expire after `--set` shortened
  their timeout: connection counts and OVERLOAD change only when entries expire.
Traffic steps take `clients`: the client addresses to use, in turn ("c1".."c4" for most; up to
"c44" where many sources matter, MANY_CLIENTS), and `vips`: the virtual addresses, in turn
("vip", and "vip2".. of a scenario with extra_vips). Every connection and datagram has its own
source port (but see same_port), chosen by the runner (the same in both systems). A
connection a real server refuses (RST: see Scenario.refuse) is recorded as
"refused:<server>", the server read from the director's connection table (`-Lnc`); one the
director refuses itself (no real server available: ICMP port unreachable, no entry) as
"refused:none".
`kernel_counts` on a traffic step states how often kernel IPVS is known to pick each server
(from the kernel source): a check of the harness itself, asserted on kernel IPVS only.

Scenario.kernel_lacks names what the guest's kernel does not have (a scheduler Debian does not
build): there the kernel's refusal of the rules is checked, lbd is checked on its own (every flow
answered; `lbd_counts` on traffic steps: inclusive bounds per server, for random schedulers), and
the difference from the kernel is reported as a warning, not failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

System = Literal["kernel", "lbd"]
SYSTEMS: tuple[System, ...] = ("kernel", "lbd")
SERVICE_PORT = 80  # every real server answers TCP and UDP on this port of the scenario's VIP
REAL_SERVERS = ("rs1", "rs2", "rs3", "rs4")
CLIENTS = ("c1", "c2", "c3", "c4")
MANY_CLIENTS = tuple(f"c{i}" for i in range(1, 45))  # c1..c44: sources enough for the hashing schedulers
MAX_EXTRA_VIPS = 200  # all scenarios' extra VIPs together (they share one /24)
UDP_SIZE_MIN, UDP_SIZE_MAX = 64, 65507  # Udp(size=): room for the answer's lines; the largest IPv4 UDP payload


@dataclass(frozen=True)
class Output:
    """The stdout of the step named `step` of `system` in the same scenario."""

    step: str
    system: System


@dataclass(frozen=True)
class Admin:
    cmd: str
    stdin: str | Output | None = None
    name: str | None = None


@dataclass(frozen=True)
class Listing:
    cmd: str  # "-Ln", "-Lnc", "-Ln --stats", ...
    name: str | None = None


@dataclass(frozen=True)
class Connect:
    n: int
    clients: tuple[str, ...] = ("c1",)
    kernel_counts: dict[str, int] | None = field(default=None, hash=False)
    vips: tuple[str, ...] = ("vip",)
    lbd_counts: dict[str, tuple[int, int]] | None = field(default=None, hash=False)
    port: int = 0  # the VIP's port connected to; 0: SERVICE_PORT (others must be in Scenario.extra_ports)


@dataclass(frozen=True)
class Hold:
    n: int
    group: str = "held"
    clients: tuple[str, ...] = ("c1",)
    kernel_counts: dict[str, int] | None = field(default=None, hash=False)
    vips: tuple[str, ...] = ("vip",)
    lbd_counts: dict[str, tuple[int, int]] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class Release:
    group: str = "held"


@dataclass(frozen=True)
class Udp:
    n: int
    clients: tuple[str, ...] = ("c1",)
    kernel_counts: dict[str, int] | None = field(default=None, hash=False)
    vips: tuple[str, ...] = ("vip",)
    same_port: bool = False  # each client's datagrams of this step share one source port
    lbd_counts: dict[str, tuple[int, int]] | None = field(default=None, hash=False)
    port: int = 0  # the VIP's port datagrams go to; 0: SERVICE_PORT (others must be in Scenario.extra_ports)
    ttl: int = 0  # the datagrams' IP TTL; 0: the client's default. Outcomes then carry the TTL the real
                  # server saw ("rs1 ttl=4"): how many routers (the director) decremented it
    size: int = 0  # UDP payload bytes (> 1472: fragmented at the client's 1,500-byte MTU); 0: a 2-byte
                   # question. Outcomes read "rs1 whole" when the real server got every byte and its
                   # answer, as large, came back whole (traffic.udp_exchange)
    any_source: bool = False  # the client's socket is unconnected: an answer from elsewhere than the VIP:port
                              # asked (not translated back) is taken, and the outcome names its source
                              # ("rs1 from nrs1:80")


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Admin | Listing | Connect | Hold | Release | Udp | Wait


@dataclass(frozen=True)
class Scenario:
    """One comparison. `name` is the pytest id; `why` says what it pins down."""

    name: str
    why: str
    rules: str  # fed to `-R` after `-C`; may be "" (then only -C)
    steps: tuple[Step, ...]
    refuse: tuple[str, ...] = ()  # real servers that answer every SYN to this VIP with RST
    first: System = "kernel"  # which system plays the scenario first
    extra_vips: int = 0  # virtual addresses {vip2}..{vip<1+extra_vips>} besides {vip}
    kernel_lacks: str = ""  # the guest's kernel cannot play this: what it lacks (see the module doc)
    extra_ports: tuple[int, ...] = ()  # the real servers also answer on these ports of every VIP (TCP and UDP)
    # The operator's mangle PREROUTING rules on the director (fwmark services), e.g. "-d {vip}/32 -p tcp
    # -j MARK --set-mark 1": inserted at the top before the scenario plays, deleted after it, on both systems.
    marks: tuple[str, ...] = ()

    @property
    def vip_names(self) -> tuple[str, ...]:
        return ("vip", *(f"vip{k}" for k in range(2, 2 + self.extra_vips)))

    def __post_init__(self) -> None:
        names: set[str] = set()
        held: set[str] = set()
        for step in self.steps:
            if isinstance(step, (Admin, Listing)) and step.name:
                names.add(step.name)
            if isinstance(step, Admin) and isinstance(step.stdin, Output):
                if step.stdin.step not in names:
                    raise ValueError(f"{self.name}: stdin from step {step.stdin.step!r}, not named before")
                if step.stdin.system != self.first:
                    raise ValueError(f"{self.name}: stdin from {step.stdin.system}, which plays after "
                                     f"{self.first}; set first={step.stdin.system!r}")
            if isinstance(step, (Connect, Hold, Udp)):
                if not 1 <= step.n <= 200:
                    raise ValueError(f"{self.name}: {step} must have 1..200 connections")
                for server, (low, high) in (step.lbd_counts or {}).items():
                    if server not in REAL_SERVERS or not 0 <= low <= high <= step.n:
                        raise ValueError(f"{self.name}: lbd_counts {server}: ({low}, {high}) of {step.n}")
                port = getattr(step, "port", 0)
                if port and port not in self.extra_ports:
                    raise ValueError(f"{self.name}: {step} connects to port {port}, not in extra_ports")
                bad = [c for c in step.clients if c not in MANY_CLIENTS]
                if bad or not step.clients:
                    raise ValueError(f"{self.name}: unknown clients {bad} (use c1..c{len(MANY_CLIENTS)})")
                bad = [v for v in step.vips if v not in self.vip_names]
                if bad or not step.vips:
                    raise ValueError(f"{self.name}: unknown vips {bad} (this scenario has {self.vip_names})")
            if isinstance(step, Udp) and step.size and not UDP_SIZE_MIN <= step.size <= UDP_SIZE_MAX:
                raise ValueError(f"{self.name}: {step} size must be {UDP_SIZE_MIN}..{UDP_SIZE_MAX} bytes")
            if isinstance(step, Wait) and not 0 < step.seconds <= 60:
                raise ValueError(f"{self.name}: {step} must wait 0..60 s")
            if isinstance(step, Hold):
                held.add(step.group)
            if isinstance(step, Release) and step.group not in held:
                raise ValueError(f"{self.name}: Release({step.group!r}) of no Hold")
        if not 0 <= self.extra_vips <= MAX_EXTRA_VIPS:
            raise ValueError(f"{self.name}: extra_vips must be 0..{MAX_EXTRA_VIPS}")
        if self.kernel_lacks and not self.rules:
            raise ValueError(f"{self.name}: kernel_lacks needs the rules the kernel refuses")
        bad_refuse = [r for r in self.refuse if r not in REAL_SERVERS]
        if bad_refuse:
            raise ValueError(f"{self.name}: refuse names unknown servers {bad_refuse}")


def step_vips(step: Step) -> tuple[str, ...]:
    return step.vips if isinstance(step, (Connect, Hold, Udp)) else ("vip",)


def describe(step: Step) -> str:
    """A one-line name of a step, the same for both systems (placeholders unexpanded)."""
    if isinstance(step, Admin):
        src = ""
        if isinstance(step.stdin, Output):
            src = f" < output of {step.stdin.system}'s {step.stdin.step!r}"
        elif step.stdin is not None:
            src = " < (text)"
        return f"ADMIN {step.cmd}{src}"
    if isinstance(step, Listing):
        return f"ADMIN {step.cmd}"
    to = "" if step_vips(step) == ("vip",) else f" to {','.join(step_vips(step))}"
    if isinstance(step, Connect):
        return f"CONNECT x{step.n} from {','.join(step.clients)}{to} (open, answer, close)"
    if isinstance(step, Hold):
        return f"HOLD x{step.n} from {','.join(step.clients)}{to} as {step.group!r}"
    if isinstance(step, Release):
        return f"RELEASE {step.group!r}"
    if isinstance(step, Udp):
        how = "one source port per client" if step.same_port else "one datagram per source port"
        ttl = f" with TTL {step.ttl}" if step.ttl else ""
        size = f" of {step.size} bytes" if step.size else ""
        any_source = ", answers taken from any source" if step.any_source else ""
        return f"UDP x{step.n}{size} from {','.join(step.clients)}{to}{ttl} ({how}{any_source})"
    if isinstance(step, Wait):
        return f"WAIT {step.seconds:g} s"
    raise TypeError(step)
