"""lbadm's exit statuses and messages: ipvsadm's wording (libipvs ipvs_strerror), by operation."""

from __future__ import annotations

import errno as errno_codes
import os

PROG = "lbadm"

EXIT_OK = 0
EXIT_LIST_FAILED = 1
EXIT_BAD_ARGS = 2
EXIT_NO_DAEMON = 2
EXIT_OP_FAILED = 255


class UsageError(Exception):
    """Invalid command line: `message` goes to stderr, the process exits with `status`."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def fail(message: str) -> UsageError:
    """ipvsadm's fail(2, ...)."""
    return UsageError(message, EXIT_BAD_ARGS)


def tryhelp() -> UsageError:
    return UsageError(f"Try `{PROG} -h' or '{PROG} --help' for more information.", EXIT_OP_FAILED)


# libipvs ipvs_strerror(): the message depends on the operation.
_OP_ERRORS: dict[str, dict[str, str]] = {
    "add_service": {"EEXIST": "Service already exists"},
    "edit_service": {"ESRCH": "No such service"},
    "del_service": {"ESRCH": "No such service"},
    "zero": {"ESRCH": "No such service"},
    "add_dest": {"ESRCH": "Service not defined", "EEXIST": "Destination already exists"},
    "edit_dest": {"ESRCH": "Service not defined", "ENOENT": "No such destination"},
    "del_dest": {"ESRCH": "Service not defined", "ENOENT": "No such destination"},
    "start_daemon": {"EEXIST": "Daemon has already run"},
    "stop_daemon": {"ESRCH": "No daemon is running"},
    "list": {"ESRCH": "No such service"},
    # DPVS's libipvs
    "add_laddr": {"ESRCH": "Service not defined", "EEXIST": "Local address already exists"},
    "del_laddr": {"ESRCH": "Service not defined", "ENOENT": "No such Local address"},
}
_GENERIC_ERRORS = {
    "EPERM": "Permission denied (you must be root)",
    "ENOPROTOOPT": "Protocol not available",
    "ENOMEM": "Memory allocation problem",
    "EAFNOSUPPORT": "Operation not supported with specified address family",
    "EMSGSIZE": "Module is wrong version",
}
# For these libipvs has only a vague text ("Invalid operation.  Possibly wrong
# module version, ...", "Operation not supported with IPv6"); lbd's own reason
# says which argument or feature, so it is printed instead.
_ERRNOS_EXPLAINED_BY_LBD = frozenset({"EINVAL", "EOPNOTSUPP", "ENOTSUP"})
# libipvs says "Scheduler or persistence engine not found" for ENOENT after -A/-E, which a kernel
# user reads as "module not loaded": lbd's reason names the schedulers it has instead.
_OP_ERRNOS_EXPLAINED_BY_LBD = {"add_service": {"ENOENT"}, "edit_service": {"ENOENT"}}


def ipvs_strerror(op: str, errno_name: str, lbd_message: str) -> str:
    """The message ipvsadm prints for `errno_name` after operation `op`."""
    specific = _OP_ERRORS.get(op, {}).get(errno_name)
    if specific is not None:
        return specific
    if errno_name in _ERRNOS_EXPLAINED_BY_LBD or errno_name in _OP_ERRNOS_EXPLAINED_BY_LBD.get(op, ()):
        return lbd_message
    generic = _GENERIC_ERRORS.get(errno_name)
    if generic is not None:
        return generic
    code = getattr(errno_codes, errno_name, None)
    if isinstance(code, int):
        return os.strerror(code)
    return lbd_message
