"""Data-parallel training: 2 CPU ranks (gloo) end with the same δ-mem parameters as one process taking the
same global batch as 2 micro-batches (gradients averaged alike), also when one rank's whole share is dropped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from train_helpers import HERE, REPO

WORKER = os.path.join(HERE, "dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=1e-7, msg=k)


@pytest.mark.slow
def test_two_ranks_match_one_process(tiny_dir, tmp_path):
    dist_out, single_out = tmp_path / "dist", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), WORKER, tiny_dir, str(dist_out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    except subprocess.TimeoutExpired as e:  # e.g. ranks stuck in mismatched collectives
        pytest.fail(f"distributed run timed out (hung?): {(e.stderr or b'')[-3000:]!r}")
    assert proc.returncode == 0, proc.stderr[-4000:]

    # the same script in this process: world size 1, the whole global batch
    import dist_worker

    dist_worker.main(tiny_dir, str(single_out))
    r0, r1 = (torch.load(dist_out / f"params-rank{r}.pt", weights_only=False) for r in (0, 1))
    single = torch.load(single_out / "params-rank0.pt", weights_only=False)

    for phase in ("fit", "extra"):
        _close(r0[phase], r1[phase], rtol=0)  # ranks stay identical
        _close(r0[phase], single[phase], rtol=1e-5)
    assert r0["step"] == r1["step"] == single["step"] == 3
    assert r1["dropped"] == 2 and r0["dropped"] == 0 and single["dropped"] == 2
    # the logged global figures agree too
    for key in ("distill", "gate"):
        assert r0["last"][key] == pytest.approx(single["last"][key], rel=1e-5)
        assert r0["extra_log"][key] == pytest.approx(single["extra_log"][key], rel=1e-5)
    # only rank 0 writes the run's files
    run = dist_out / "run"
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "checkpoint" / "trainer.pt").exists()
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
