"""Several processes (torchrun, gloo on CPU): one run folder, written once, by the main process."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_dpo_writes_one_run_folder(dpo_argv, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "run_rl.py"), *dpo_argv, "--batch_size", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "out" / "t"
    log = (run / "logs" / "training_log.txt").read_text()
    assert log.count("step 4/4 train:") == 1 and log.count("saved checkpoint-2") == 1
    steps = [e["step"] for e in json.loads((run / "logs" / "rewards.json").read_text())["steps"]]
    assert steps == [1, 2, 3, 4]
    assert (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert proc.stdout.count("Run folder:") == 1
