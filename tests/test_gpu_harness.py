"""benchmarks/gpu/harness.py on the CPU with tiny phases: the versions header, the JSONL records, a hanging
phase killed at its limit with a stack dump naming the hanging function, and the phases after it still run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_harness_times_out_a_hanging_phase_with_its_stack_and_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu" / "harness.py"), "--out", str(out),
           "--device", "cpu", "--quick", "--phases", "versions,sleep_test,smoke", "--limit", "sleep_test=2",
           "--dump-every", "0.5", "--work", str(tmp_path / "work")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    log = p.stdout + p.stderr
    assert p.returncode == 1, log  # one phase (sleep_test) did not end ok

    # versions first: the machine (nvidia-smi, CPUs), then torch / CUDA / cuDNN / timm from the phase
    assert log.index("nvidia_smi:") < log.index("versions: start") < log.index("sleep_test: start"), log
    versions = (out / "versions.txt").read_text()
    for key in ("nvidia_smi:", "cpu_count:", "torch:", "cuda:", "cudnn:", "timm:"):
        assert key in versions, versions

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ends = {r["phase"]: r for r in records if r.get("event") == "end"}
    assert [r["phase"] for r in records if r.get("event") == "end"] == ["versions", "sleep_test", "smoke"]
    assert ends["versions"]["status"] == "ok" and ends["smoke"]["status"] == "ok", ends

    # the hang: killed at its 2 s limit, with the last stack dump naming the sleeping function
    hang = ends["sleep_test"]
    assert hang["status"] == "timeout" and hang["limit_s"] == 2 and hang["seconds"] < 10, hang
    assert "hang_sleeping_here" in hang["last_stack"], hang["last_stack"]
    assert any(r["phase"] == "sleep_test" and r.get("step") == "before_hang" for r in records)
    stacks = (out / "stacks.log").read_text()
    assert "=== phase sleep_test" in stacks and "timeout after 2 s" in stacks
    assert "Stack dump of phase sleep_test" in stacks  # the periodic dumps (every 0.5 s) ran too
    assert "hang_sleeping_here" in stacks

    # the smoke phase after it ran every step
    steps = {r["step"]: r for r in records if r["phase"] == "smoke" and "step" in r}
    for step in ("device_init", "protonet_train_step", "maml_vmap_step", "evaluate", "checkpoint_write_load"):
        assert steps[step]["status"] == "ok", steps.get(step)
    assert (out / "phases.log").read_text().count("=== phase") == 3
