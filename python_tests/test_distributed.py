"""The regularizer in a 2-rank DDP step (torchrun, gloo on the CPU): per-rank scoring, averaged gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_regularizer_under_ddp_scores_each_rank_and_averages_gradients(tmp_path):
    job = Path(__file__).with_name("ddp_regularizer_job.py")
    out = tmp_path / "verdict.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(job),
                    str(out)], check=True, env=env, cwd=tmp_path, timeout=300)
    verdict = json.loads(out.read_text())
    assert verdict["ranks_agree"] and verdict["mean_of_single"]
    # Each rank's loss is the single-process loss of its own batch: nothing was gathered.
    assert verdict["losses"] == pytest.approx(verdict["single_losses"], rel=1e-6)
    assert verdict["losses"][0] != pytest.approx(verdict["losses"][1])
