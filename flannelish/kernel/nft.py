"""Running ``nft``: the one way flannelish changes or reads nftables.

The daemon's table (flannelish.node.firewall), the CNI plugin's per-pod
masquerade (flannelish.cni.masq) and ``flannelish doctor`` all go through an
:class:`NftRunner`; unit tests pass flannelish.testing.nft.FakeNft instead of
:class:`NftCli`.  Callers map the errors to their own terms (the CNI plugin,
for instance, keeps reporting a missing ``nft`` as an internal error).

Standard library only, with ``subprocess`` and ``json`` imported on first
use: the CNI plugin imports this module on every invocation, and most
invocations never masquerade.
"""

from __future__ import annotations

from typing import Any, Protocol

from flannelish.errors import KernelError, NotAvailableError


class NftRunner(Protocol):
    """The two things flannelish needs from nftables."""

    def run(self, script: str) -> None:
        """Apply a script atomically (``nft -f -``); raise KernelError on failure."""

    def listing(self, *what: str, terse: bool = False) -> list[dict[str, Any]] | None:
        """The ``nftables`` array of ``nft -j list <what>`` (e.g. ``"table", "ip",
        "flannelish"``), or None if that table, chain or map does not exist.
        ``terse``: without the elements of sets (``nft -t``)."""


class NftCli:
    """NftRunner running the ``nft`` binary, optionally inside a named namespace.

    The process inherits the calling thread's network namespace unless
    ``netns`` names another one.  A missing binary raises NotAvailableError.
    """

    def __init__(self, netns: str | None = None, binary: str = "nft", timeout: float = 10.0):
        self.netns = netns
        self.binary = binary
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"NftCli(netns={self.netns!r}, binary={self.binary!r}, timeout={self.timeout!r})"

    def _exec(self, args: list[str], stdin: str | None = None) -> Any:
        import subprocess

        argv = [self.binary, *args]
        if self.netns:
            # Under `ip netns exec` a missing nft is just a failed command, which
            # listing() could take for an absent table: look for it first.
            import shutil

            if shutil.which(self.binary) is None:
                raise NotAvailableError(f"{self.binary} not found", "install the nftables package")
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            return subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            raise NotAvailableError(
                f"{argv[0]} not found", "install the nftables package"
            ) from None

    def run(self, script: str) -> None:
        result = self._exec(["-f", "-"], script)
        if result.returncode != 0:
            raise KernelError("nftables transaction failed", result.stderr.strip())

    def listing(self, *what: str, terse: bool = False) -> list[dict[str, Any]] | None:
        import json

        result = self._exec(["-j", *(["-t"] if terse else []), "list", *what])
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return None
            raise KernelError(f"cannot list nftables {' '.join(what)}", result.stderr.strip())
        try:
            return list(json.loads(result.stdout or '{"nftables": []}')["nftables"])
        except (ValueError, KeyError) as exc:
            raise KernelError("nft -j printed something that is not its JSON", str(exc)) from None
