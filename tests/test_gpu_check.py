"""benchmarks/gpu_check.sh, as CI can check it without a GPU: its --dry-run goes through every step in order, each
under its time bound, on the CPU (tiny sizes, the build left out, the test selections collected, not run), and the
bounds together fit the eight minutes one command of a lent GPU machine has."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["build", "verify", "kernels", "exactness", "precision", "dropin", "supernet", "supernet-bf16",
         "supernet-fp16", "bandwidth", "dropin-benchmark"]


def test_dry_run_goes_through_every_step_within_its_bound(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses.pop("build") == statuses.pop("supernet-fp16") == "skipped", statuses
    assert set(statuses.values()) == {"ok"}, statuses
    assert summary["bound_s"] <= 480
    written = sorted(p.name for p in tmp_path.iterdir())
    assert {"check.txt", "summary.json", "supernet.json", "supernet-bf16.json", "dropin.json"} <= set(written)
    assert len(written) <= 8, written
    dropin = json.loads((tmp_path / "dropin.json").read_text())["codebases"]
    assert sorted(dropin) == ["darts", "nas-bench-201", "pcdarts"] and all(c["fused"] and not c["left"]
                                                                            for c in dropin.values())
