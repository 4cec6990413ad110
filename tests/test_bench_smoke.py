"""The benchmark harness still runs: `python bench/run.py --quick` end to end, every figure in its JSON.

Only that it completes and reports; the numbers and targets are for docs/benchmarks.md, never
asserted here (a timed unit test on a shared machine is a flaky test).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.procs import ROOT

FIGURES = ["1_added_latency", "2_throughput", "3_streaming", "4_many_streams", "5_relay", "6_engine",
           "7_cold_start"]
# Figures the harness measures on every machine; 5 and 6 may be TODO while their code is missing.
ALWAYS = ["1_added_latency", "2_throughput", "3_streaming", "4_many_streams", "7_cold_start"]


def test_quick_benchmark_completes_and_reports_every_figure(tmp_path):
    out, md = tmp_path / "quick.json", tmp_path / "quick.md"
    proc = subprocess.run([sys.executable, "bench/run.py", "--quick", "--litellm", "no", "--out", str(out),
                           "--md", str(md)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    for name in FIGURES:
        assert name in figures, f"figure {name} missing from the JSON"
        assert figures[name]["status"] in ("measured", "todo"), figures[name]
        if figures[name]["status"] == "todo":
            assert figures[name]["reason"]
    for name in ALWAYS:
        assert figures[name]["status"] == "measured", name
    f1, f2, f3, f4 = (figures[k] for k in ALWAYS[:4])
    assert f1["added_us"]["gateway"]["p50"]["median"] is not None
    assert f2["rps"]["gateway"]["median"] > 0 and f2["rps"]["direct"]["median"] > 0
    assert f3["paced_over_direct"]["gateway"]["median"] > 0
    assert f4["gateway_rss_mb"]["peak"]["median"] > 0
    assert figures["7_cold_start"]["seconds"]["gradio_import"]["median"] > 0
    assert result["table"] and "# Benchmarks" in md.read_text()
