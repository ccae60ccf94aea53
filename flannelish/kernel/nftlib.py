"""An NftRunner that calls libnftables in-process (ctypes), for frequent small transactions.

Starting ``nft`` costs a fork and an exec (tens of ms, hundreds on a loaded
machine); the policy agent applies a transaction per change and its latency
goal is well under a second, so it talks to the library the ``nft`` binary is
built on: the same parser, the same atomic batch, no process.  Two contexts per
runner, each under its own lock (a context is not thread-safe): one for
transactions, one for listings, so a long listing never holds a change back.  The netlink socket
belongs to the namespace the thread is in when it is opened, so the context is
created, and every command runs, inside ``netns`` when one is named.

:func:`nft_runner` falls back to :class:`flannelish.kernel.nft.NftCli` where
the library cannot be loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from flannelish.errors import KernelError

from .netns import in_netns
from .nft import NftCli, NftRunner

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4
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
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


class NftLib:
    """NftRunner on libnftables; raises OSError at construction if the library is missing."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._lib = _load()
        self._ctxs: dict[str, Any] = {}
        self._locks = {"run": threading.Lock(), "list": threading.Lock()}
        for use in self._locks:
            with in_netns(netns):
                ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
            if not ctx:
                self.close()
                raise OSError("nft_ctx_new failed")
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            self._ctxs[use] = ctx

    def __repr__(self) -> str:
        return f"NftLib(netns={self.netns!r})"

    def close(self) -> None:
        for use, lock in self._locks.items():
            with lock:
                ctx = self._ctxs.pop(use, None)
                if ctx:
                    self._lib.nft_ctx_free(ctx)

    def _cmd(self, use: str, text: str, as_json: bool = False) -> tuple[int, str, str]:
        with self._locks[use]:
            ctx = self._ctxs.get(use)
            if not ctx:
                raise KernelError("nftables context closed")
            lib = self._lib
            flags = lib.nft_ctx_output_get_flags(ctx)
            want = flags | NFT_CTX_OUTPUT_JSON if as_json else flags & ~NFT_CTX_OUTPUT_JSON
            lib.nft_ctx_output_set_flags(ctx, want)
            with in_netns(self.netns):
                rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            return rc, out, err

    def run(self, script: str) -> None:
        rc, _, err = self._cmd("run", script)
        if rc != 0:
            raise KernelError("nftables transaction failed", err.strip())

    def listing(self, *what: str) -> list[dict[str, Any]] | None:
        rc, out, err = self._cmd("list", "list " + " ".join(what), as_json=True)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise KernelError(f"cannot list nftables {' '.join(what)}", err.strip())
        try:
            return list(json.loads(out or '{"nftables": []}')["nftables"])
        except (ValueError, KeyError) as exc:
            raise KernelError("libnftables printed no JSON", str(exc)) from None


def nft_runner(netns: str | None = None) -> NftRunner:
    """libnftables in-process where it loads, else the ``nft`` binary."""
    try:
        return NftLib(netns)
    except OSError:
        return NftCli(netns=netns)
