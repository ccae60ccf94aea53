"""The benchmarks' results format: one flat JSON document per bench run.

Every bench script accepts ``--json PATH`` and writes (besides its usual
table on stdout) one document of this shape; ``bench/report.py`` renders
whatever documents exist.  Format ``flannelish-bench/1``::

    {
      "format": "flannelish-bench/1",
      "bench": "cni",                      # which script (also the file's stem)
      "params": {"rounds": 30},            # its arguments, e.g. {"peers": 1000}
      "host": {"cpus": 2, "kernel": "6.1.0-...",
               "loadavg_start": [7.7, 11.4, 10.2], "loadavg_end": [...],
               "started": "2026-12-01T05:10:00Z", "seconds": 123.4},
      "figures": {                         # flat: one name -> one number
        "cni.ADD.c1.daemon.p99": {"value": 4.2, "unit": "ms",
                                  "baseline": 5.0, "baseline_name": "reference",
                                  "ratio": 0.84, "goal": "<= 1.0x"},
        ...
      },
      "samples": {                         # flat: one name -> raw measurements
        "cni.ADD.c1.daemon": [3.1, 2.9, ...],    # unit in "sample_units"
        ...
      },
      "sample_units": {"cni.ADD.c1.daemon": "ms"},
      "notes": ["flanneld skipped: FLANNELD_BIN is not set"]
    }

``baseline``, ``baseline_name``, ``ratio`` and ``goal`` are optional; ``ratio``
is value / baseline.  Names are dot-separated, most general first, so a
prefix selects a group.  Nothing else is required of a bench: a figure
without samples, or samples without figures, are both fine.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

FORMAT = "flannelish-bench/1"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100 (0.0 for no values).

    The one definition every bench prints and the report renders, so a p99 in a
    bench's table and in summary.md is the same number (for 100 samples: the
    second largest, not the largest)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) / 100) - 1))]


class Results:
    """Collects one run's figures and samples; ``write`` is a no-op without a path."""

    def __init__(self, bench: str, path: str | None, **params: Any) -> None:
        self.path = path
        self._t0 = time.monotonic()
        self.doc: dict[str, Any] = {
            "format": FORMAT,
            "bench": bench,
            "params": params,
            "host": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "loadavg_start": list(os.getloadavg()),
                "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "figures": {},
            "samples": {},
            "sample_units": {},
            "notes": [],
        }

    def figure(
        self,
        name: str,
        value: float,
        unit: str,
        baseline: float | None = None,
        baseline_name: str | None = None,
        goal: str | None = None,
    ) -> None:
        fig: dict[str, Any] = {"value": round(float(value), 6), "unit": unit}
        if baseline is not None:
            fig["baseline"] = round(float(baseline), 6)
            if baseline_name:
                fig["baseline_name"] = baseline_name
            if baseline:
                fig["ratio"] = round(float(value) / float(baseline), 4)
        if goal:
            fig["goal"] = goal
        self.doc["figures"][name] = fig

    def samples(self, name: str, values: list[float], unit: str) -> None:
        self.doc["samples"][name] = [round(float(v), 6) for v in values]
        self.doc["sample_units"][name] = unit

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)

    def write(self) -> None:
        if not self.path:
            return
        self.doc["host"]["loadavg_end"] = list(os.getloadavg())
        self.doc["host"]["seconds"] = round(time.monotonic() - self._t0, 1)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{self.path}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)


def load(path: str | Path) -> dict[str, Any]:
    """One results document; ValueError when it is not of this format."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} document")
    for key in ("figures", "samples", "sample_units", "params", "host"):
        doc.setdefault(key, {})
    doc.setdefault("notes", [])
    return doc
