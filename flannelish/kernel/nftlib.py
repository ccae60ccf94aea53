"""An NftRunner that applies transactions through libnftables in-process (ctypes).

Starting ``nft`` costs a fork and an exec (tens of ms, hundreds on a loaded
machine); the policy agent applies a transaction per change and its latency
goal is well under a second, so it talks to the library the ``nft`` binary is
built on: the same parser, the same atomic batch, no process.  The library
keeps process-wide state (its JSON output uses ``strtok``: two contexts
listing at once in one process crashed it), so every call into it holds one
process-wide lock, and listings (JSON, possibly large and slow) go to the
``nft`` binary instead: a drift check never holds a change back, and no JSON
is produced in-process.  The netlink socket belongs to the namespace the
thread is in when it is opened, so the context is created, and every command
runs, inside ``netns`` when one is named.

:func:`nft_runner` falls back to :class:`flannelish.kernel.nft.NftCli` where
the library cannot be loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

from flannelish.errors import KernelError

from .netns import in_netns
from .nft import NftCli, NftRunner

NFT_CTX_DEFAULT = 0
_LIBRARY = "libnftables.so.1"


def _load() -> Any:
    lib = ctypes.CDLL(_LIBRARY, use_errno=True)
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_LIB_LOCK = threading.Lock()  # one call into libnftables at a time, in the whole process


class NftLib:
    """NftRunner on libnftables; raises OSError at construction if the library is missing."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._lib = _load()
        self._cli = NftCli(netns=netns)  # listings
        with _LIB_LOCK, in_netns(netns):
            ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._ctx = ctx

    def __repr__(self) -> str:
        return f"NftLib(netns={self.netns!r})"

    def close(self) -> None:
        with _LIB_LOCK:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def run(self, script: str) -> None:
        with _LIB_LOCK:
            if not self._ctx:
                raise KernelError("nftables context closed")
            with in_netns(self.netns):
                rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            self._lib.nft_ctx_get_output_buffer(self._ctx)  # read: the buffer starts over
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise KernelError("nftables transaction failed", err.strip())

    def listing(self, *what: str, terse: bool = False) -> list[dict[str, Any]] | None:
        return self._cli.listing(*what, terse=terse)


def nft_runner(netns: str | None = None) -> NftRunner:
    """libnftables in-process where it loads, else the ``nft`` binary."""
    try:
        return NftLib(netns)
    except OSError:
        return NftCli(netns=netns)
