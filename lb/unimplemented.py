"""What lbd does not implement (yet), in one table.

`lbadm -h` marks each of these options; lbadm refuses a command line that uses one (exit 255,
as for an operation the kernel refuses, with the message below: what lbd does instead, never a
kernel text that means something else), and lbd refuses the same requests from other clients.
Implementing a feature removes its entry: one line.
"""

from __future__ import annotations

from lb.records import NamedTuple


class Missing(NamedTuple):
    option: str  # lbadm's long option name (the -h line it marks; the command line token it refuses)
    what: str  # the feature, as an operator names it
    instead: str = ""  # what lbd offers instead
    values: frozenset[str] = frozenset()  # only these values of the option are missing (empty: any use)
    mark: str = "not implemented by lbd"  # appended to the option's -h line, in brackets
    text: str = ""  # the whole refusal, when "lbd does not implement <what>; <instead>" does not fit

    @property
    def message(self) -> str:
        if self.text:
            return self.text
        return f"lbd does not implement {self.what}" + (f"; {self.instead}" if self.instead else "")

    def refuses(self, option: str, value: str | None) -> bool:
        """Whether using `option` (with `value`; comma-separated lists count per item) is refused."""
        if option != self.option:
            return False
        if not self.values:
            return True
        return any(item in self.values for item in (value or "").split(","))


_SERVICES = "it balances TCP (-t), UDP (-u) and fwmark (-f) services"

NOT_IMPLEMENTED: tuple[Missing, ...] = (
    Missing("sctp-service", "SCTP services (--sctp-service)", _SERVICES),
    Missing("ipv6", "IPv6", text="IPv6 is not supported by lbd: virtual services, real servers and local "
                                 "addresses are IPv4"),
    Missing("pe", "persistence engines (--pe)", "its persistence is by client address (-p, -M)"),
    Missing("tun-type", "tunnel types gue and gre (--tun-type)", "its tunnels are IPIP (--tun-type ipip)",
            values=frozenset({"gue", "gre"}), mark="lbd: ipip only"),
)


_by_option: tuple[tuple[Missing, ...], dict[str, Missing]] = ((), {})


def refusal(option: str, value: str | None = None) -> Missing | None:
    """The entry refusing this use of an option, if any (a dict lookup: lbadm -R asks for every
    option of every line; the index follows NOT_IMPLEMENTED if it is replaced)."""
    global _by_option
    if _by_option[0] is not NOT_IMPLEMENTED:
        _by_option = (NOT_IMPLEMENTED, {m.option: m for m in NOT_IMPLEMENTED})
    m = _by_option[1].get(option)
    return m if m is not None and m.refuses(option, value) else None


def entry(option: str) -> Missing:
    """The entry of an option lbd does not implement (KeyError once it is implemented)."""
    found = next((m for m in NOT_IMPLEMENTED if m.option == option), None)
    if found is None:
        raise KeyError(f"{option} is implemented (no entry in lb.unimplemented)")
    return found
