"""`pip install .` gives an importable package and the `qrl` command, with the shipped config and data, usable from
an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)  # fmt: skip
    (found,) = out.glob("q_rl-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment (the machine's packages visible, as torch is) with the wheel installed, not editable."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return env_dir


def test_the_wheel_holds_the_package_the_command_and_the_shipped_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(z.read(n).decode() for n in names if n.endswith("METADATA"))
        entry = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for name in ("qrl/cli.py", "qrl/execution/sandbox.py", "qrl/shipped/config.yaml",
                 "qrl/shipped/configs/reward_model.yaml", "qrl/shipped/configs/accelerate/ddp.yaml",
                 "qrl/shipped/data/preferences.jsonl", "qrl/shipped/data/problems/python.jsonl"):  # fmt: skip
        assert name in names, name
    assert not any(n.startswith(("tests/", "bench/", "recipes/")) for n in names)
    assert "Requires-Python: >=3.11" in meta and "qrl = qrl.cli:main" in entry


def test_installed_package_works_from_an_empty_folder(installed: Path, tmp_path: Path, tiny_model: Path) -> None:
    """`import qrl` and `qrl` from a folder with nothing in it: the package's own files, not the checkout's; the
    shipped problems lie among the installed packages, which programs see, yet programs cannot read them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    where = run(str(installed / "bin" / "python"), "-c", "import qrl, qrl.resources as r; "
                "print(qrl.__file__); print(r.PROBLEMS.is_file(), r.DEFAULT_CONFIG.is_file())")  # fmt: skip
    assert where.returncode == 0, where.stderr[-2000:]
    path, files = where.stdout.splitlines()
    assert Path(path).is_relative_to(installed) and files == "True True"
    probe = ("from qrl.execution import Sandbox, Program\nimport qrl.resources as r\nwith Sandbox(1) as sb:\n"
             "    got = sb.run(Program(f'print(repr(open({str(r.PROBLEMS)!r}).read()[:20]))'))\n"
             "print(got.stdout.strip() or got.stderr.strip().splitlines()[-1])")
    seen = run(str(installed / "bin" / "python"), "-c", probe)
    shown = seen.stdout.strip()
    assert seen.returncode == 0 and (shown == "''" or shown.startswith("FileNotFoundError")), (shown, seen.stderr)
    qrl = str(installed / "bin" / "qrl")
    assert run(qrl, "--help").returncode == 0
    assert "--problems" in run(qrl, "score", "--help").stdout
    trained = run(qrl, "rl", "--use_dpo", "--base_model", str(tiny_model), "--output_dir", "out", "--experiment_name",
                  "t", "--max_steps", "1", "--save_steps", "1", "--eval_steps", "0", "--batch_size", "2",
                  "--gradient_accumulation_steps", "1", "--max_seq_length", "128")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "out" / "t" / "checkpoints" / "final").is_dir()
    bad = run(qrl, "rl", "--no_such_flag")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("qrl rl: error:")
