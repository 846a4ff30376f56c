"""Pure-Python oracles of kernel IPVS's schedulers (Linux 6.1, Debian 12's 6.1.192), written
from the kernel source and independent of lbd's engines. See README.md in this directory."""

from __future__ import annotations

from .builders import build_service, dest_address
from .conn import (
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Connection,
    state_is_active,
    tcp_next_state,
    tcp_state_is_active,
)
from .flags import (
    IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    IP_VS_SVC_F_SCHED3,
    IP_VS_SVC_F_SCHED_MH_FALLBACK,
    IP_VS_SVC_F_SCHED_MH_PORT,
    IP_VS_SVC_F_SCHED_SH_FALLBACK,
    IP_VS_SVC_F_SCHED_SH_PORT,
    SchedFlagsError,
    format_sched_flags,
    parse_sched_flags,
)
from .model import Clock, Dest, IpvsError, PacketInfo, Service
from .registry import KERNEL_HOOKS, SCHEDULERS, make_scheduler
from .sched_base import Scheduler

__all__ = [
    "Clock",
    "Connection",
    "Dest",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IP_VS_DEST_F_OVERLOAD",
    "IP_VS_SVC_F_ONEPACKET",
    "IP_VS_SVC_F_SCHED1",
    "IP_VS_SVC_F_SCHED2",
    "IP_VS_SVC_F_SCHED3",
    "IP_VS_SVC_F_SCHED_MH_FALLBACK",
    "IP_VS_SVC_F_SCHED_MH_PORT",
    "IP_VS_SVC_F_SCHED_SH_FALLBACK",
    "IP_VS_SVC_F_SCHED_SH_PORT",
    "IpvsError",
    "KERNEL_HOOKS",
    "PacketInfo",
    "SCHEDULERS",
    "SchedFlagsError",
    "Scheduler",
    "build_service",
    "dest_address",
    "Service",
    "format_sched_flags",
    "make_scheduler",
    "parse_sched_flags",
    "state_is_active",
    "tcp_next_state",
    "tcp_state_is_active",
]
