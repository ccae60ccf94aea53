"""The exception hierarchy and the one place that maps errors to exit codes.

Every module raises a subclass of :class:`FlannelishError`.  The CLI turns it
into a one-line message and :func:`exit_code_for`; the CNI plugin turns it into
a CNI error object with :func:`cni_code_for`.  Standard library only, because
the CNI entry point imports it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses of `flannelish` commands (documented in README)."""

    OK = 0
    ERROR = 1  # unexpected or unclassified failure
    USAGE = 2  # bad command line (click uses 2 as well)
    CONFIG = 3  # invalid network config or flags
    ETCD = 4  # etcd unreachable, auth or TLS failure
    OUT_OF_SUBNETS = 5  # no free subnet left in the pool
    LEASE_LOST = 6  # our lease vanished and could not be re-acquired
    KERNEL = 7  # a netlink/nftables operation failed
    NOT_AVAILABLE = 8  # a component or prerequisite is missing


class CniCode(IntEnum):
    """CNI spec error codes (CNI spec 1.1.0; docs/cni-compat.md §2)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    INVALID_NETNS = 8
    TRY_AGAIN_LATER = 11
    STATUS_NOT_AVAILABLE = 50
    STATUS_LIMITED = 51
    INTERNAL = 999


class FlannelishError(Exception):
    """Base of every error flannelish raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR
    cni_code: CniCode = CniCode.INTERNAL

    def __init__(self, msg: str, details: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class ConfigError(FlannelishError):
    """The network config, a flag or a CNI netconf is invalid."""

    exit_code = ExitCode.CONFIG
    cni_code = CniCode.INVALID_CONFIG


class DuplicateNodeError(ConfigError):
    """Another live node holds a lease for our PublicIP (two hosts, one address)."""


class EtcdError(FlannelishError):
    """etcd could not be reached or refused us (auth, TLS)."""

    exit_code = ExitCode.ETCD
    cni_code = CniCode.TRY_AGAIN_LATER


class EtcdAuthError(EtcdError):
    """Wrong credentials or an untrusted certificate."""


class OutOfSubnetsError(FlannelishError):
    exit_code = ExitCode.OUT_OF_SUBNETS


class LeaseLostError(FlannelishError):
    exit_code = ExitCode.LEASE_LOST


class KernelError(FlannelishError):
    """A kernel operation (netlink, nftables, sysctl) failed.

    ``errno`` is the kernel's error number when it refused a netlink request
    (e.g. ``errno.EEXIST`` for an exclusive create), else None.
    """

    exit_code = ExitCode.KERNEL

    def __init__(self, msg: str, details: str | None = None, errno: int | None = None) -> None:
        super().__init__(msg, details)
        self.errno = errno


class NotAvailableError(FlannelishError):
    """A component, tool or prerequisite the command needs is missing."""

    exit_code = ExitCode.NOT_AVAILABLE
    cni_code = CniCode.TRY_AGAIN_LATER


def exit_code_for(exc: BaseException) -> int:
    """Exit status for a command that failed with `exc`."""
    if isinstance(exc, FlannelishError):
        return int(exc.exit_code)
    return int(ExitCode.ERROR)


def cni_code_for(exc: BaseException) -> int:
    """CNI error code for a plugin invocation that failed with `exc`."""
    if isinstance(exc, FlannelishError):
        return int(exc.cni_code)
    return int(CniCode.INTERNAL)
