"""Entry point of the `flannelish-cni` executable (CNI protocol)."""

from __future__ import annotations

import json
import os
import sys

from flannelish.errors import CniCode

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
PLUGIN_VERSION = "1.1.0"


def _error(code: int, msg: str, details: str = "") -> int:
    doc: dict[str, object] = {"cniVersion": PLUGIN_VERSION, "code": code, "msg": msg}
    if details:
        doc["details"] = details
    sys.stdout.write(json.dumps(doc))
    return 1


def run(environ: dict[str, str]) -> int:
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": PLUGIN_VERSION, "supportedVersions": SUPPORTED_VERSIONS}))
        return 0
    if not command:
        return _error(CniCode.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    return _error(CniCode.TRY_AGAIN_LATER, f"CNI_COMMAND {command} is not implemented yet")


def main() -> None:
    sys.exit(run(dict(os.environ)))


if __name__ == "__main__":
    main()
