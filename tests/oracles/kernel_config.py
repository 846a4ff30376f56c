"""Build-time values of the kernel the oracles model: Debian 12's linux 6.1.192-3 (amd64).

Each value says where it comes from. "config" means /boot/config-6.1.0-57-amd64 of Debian's
linux-image-6.1.0-57-amd64 (the kernel the project's qemu guest boots); "source default" means
the kernel has no Kconfig symbol for it and the scheduler's own fallback #define applies.
"""

from __future__ import annotations

from typing import Final

KERNEL_RELEASE: Final = "6.1.0-57-amd64 (Debian linux 6.1.192-3)"

# jiffies per second (config: CONFIG_HZ=250). lblc/lblcr keep time in jiffies.
HZ: Final = 250

# sh: buckets = 1 << 8 (config: CONFIG_IP_VS_SH_TAB_BITS=8, also the Kconfig default).
SH_TAB_BITS: Final = 8
SH_TAB_SIZE: Final = 1 << SH_TAB_BITS

# dh: no Kconfig symbol in 6.1; ip_vs_dh.c falls back to 8 bits.
DH_TAB_BITS: Final = 8
DH_TAB_SIZE: Final = 1 << DH_TAB_BITS

# mh: CONFIG_IP_VS_MH_TAB_INDEX=12 (config, also the Kconfig default). ip_vs_mh.c derives two
# values from it: the table size is the prime at index (12 - 8) of its prime list, and the
# weight-scaling bit budget is 12 / 2.
MH_CONFIG_TAB_INDEX: Final = 12
MH_PRIMES: Final = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_TAB_SIZE: Final = MH_PRIMES[MH_CONFIG_TAB_INDEX - 8]  # 4093
MH_TAB_BITS: Final = MH_CONFIG_TAB_INDEX // 2  # 6

# lblc/lblcr: no Kconfig symbol in 6.1; both files fall back to 10 bits.
LBLC_TAB_BITS: Final = 10
LBLCR_TAB_BITS: Final = 10

# Not built in Debian's kernel: "# CONFIG_IP_VS_TWOS is not set" (config). ip_vs_twos.c is in
# the 6.1.192 source tree, but there is no ip_vs_twos.ko, so `ipvsadm -s twos` fails there.
TWOS_BUILT: Final = False

# IPv6 support is built (CONFIG_IP_VS_IPV6=y): sh/dh/mh/lblc/lblcr fold IPv6 addresses.
IPV6_BUILT: Final = True
