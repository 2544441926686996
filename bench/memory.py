"""Peak memory: measured on this machine for the embedded model, estimated for 1.5B to 32B models on GPUs.

Measured: each configuration (DPO or GRPO; full fine-tuning or LoRA; gradient checkpointing on or off) trains a
few steps of the embedded SmolLM2-135M-Instruct in fp32 on the CPU, in its own process, through the toolkit's
own trainer builders, on inputs of fixed length. The number is the process's peak resident memory (VmHWM) less
its resident memory just before the model loads (Python, torch and the libraries: not training).

Estimated: one formula (``estimate``) over the model's shape, by dtype, trainable share, ZeRO/FSDP sharding
over the GPU count, reference model, activations and generation. It is checked against the measured rows.

    python bench/memory.py            # measure every row (a few minutes), save, rewrite docs/memory.md's tables
    python bench/memory.py --table    # rewrite docs/memory.md's tables from bench/results/memory.json only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "memory.json"
TABLES = ROOT / "docs" / "memory.md"
GIB = 1024**3


# --- the formula ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only (Llama/Qwen2) model: enough to count parameters, activations and KV cache."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def linear_params(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes())
        if self.qkv_bias:
            per_layer += (self.heads + 2 * self.kv_heads) * self.head_dim
        return self.layers * per_layer

    @property
    def other_params(self) -> int:
        """Embeddings, the output head (unless tied) and the norms: never quantized by QLoRA."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.linear_shapes())

    def layer_activation_bytes(self, act_bytes: int, lora_r: int = 0, dropout: bool = False) -> int:
        """Bytes one decoder layer keeps per token for its backward pass (SDPA attention: no seq x seq matrix):
        2 norms (input and normalised output, 2h each), the q/k/v input (h), q, k, v and the attention output,
        the o_proj input, the MLP input (h), and gate, SiLU(gate), up and their product (4i). LoRA adds the r
        outputs of each adapter's A; an active LoRA dropout (GRPO; DPO turns dropout off) one more copy of each
        adapted layer's input (6h + i) and its one-byte mask."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        values = 2 * h + h + q + 2 * kv + q + q + 2 * h + h + 4 * i + 7 * lora_r
        return values * act_bytes + ((6 * h + i) * (act_bytes + 1) if lora_r and dropout else 0)


# Published configurations (config.json) of the models the table is for: SmolLM2-135M (the embedded model) and
# Qwen2.5-Coder 1.5B/7B/14B/32B, the usual starting points for code RL.
ARCHS: dict[str, Arch] = {
    "SmolLM2-135M": Arch(30, 576, 1536, 9, 3, 64, 49152, tied=True),
    "Qwen2.5-Coder-1.5B": Arch(28, 1536, 8960, 12, 2, 128, 151936, tied=True, qkv_bias=True),
    "Qwen2.5-Coder-7B": Arch(28, 3584, 18944, 28, 4, 128, 152064, tied=False, qkv_bias=True),
    "Qwen2.5-Coder-14B": Arch(48, 5120, 13824, 40, 8, 128, 152064, tied=False, qkv_bias=True),
    "Qwen2.5-Coder-32B": Arch(64, 5120, 27648, 40, 8, 128, 152064, tied=False, qkv_bias=True),
}

# Bytes per parameter of (weights, gradients, optimizer states), by how the run holds them.
BYTES = {
    "fp32": (4, 4, 8),  # the CPU (or a GPU without --bf16): AdamW's two moments in fp32
    "bf16": (2, 2, 4),  # --bf16 with plain DDP: the weights load in bf16, so AdamW's moments are bf16 too
    "deepspeed_bf16": (2, 2, 12),  # ZeRO with bf16: fp32 master weights + two fp32 moments in the optimizer
    "lora_adapter": (4, 4, 8),  # PEFT keeps adapters in fp32 whatever the base's dtype
}
NF4_BYTES = 0.5 + 0.0159  # QLoRA: 4 bits per weight + double-quantised block constants (~0.127 bits)
# TRL's fused LM head never builds the (tokens x vocabulary) logits: it works through tiles of at most 4096 tokens x
# 32768 vocabulary entries. On a GPU its Triton kernels fold each tile in place (one tile buffer, in the compute
# dtype); on the CPU the torch fallback holds about 8 fp32 tile-sized temporaries in the backward pass.
TILE_TOKENS, TILE_VOCAB = 4096, 32768
TILES = {"gpu": (1, 2), "cpu": (8, 4)}  # (tile buffers, bytes per entry)
# PPO computes the answer tokens' logits in fp32 whole. Training: the logits, their tempered copy, the entropy's
# softmax and log-softmax kept for the backward pass, and their gradient; the rollout: policy and reference logits,
# the tempered copy and logsumexp's temporary, one micro-batch at a time.
PPO_LOGIT_COPIES, PPO_ROLLOUT_COPIES = 5, 4


@dataclass(frozen=True)
class Setup:
    """What one estimate is for."""

    method: str  # "dpo", "grpo" or "ppo"
    tuning: str  # "full", "lora" or "qlora"
    sharding: str  # "none" (one process or DDP), "zero2", "zero3" or "fsdp"
    gpus: int = 1
    device: str = "gpu"  # "gpu": --bf16 and Triton kernels; "cpu": fp32 and the torch fallback
    checkpointing: bool = True
    lora_r: int = 16
    seq_len: int = 1024  # DPO: tokens per sequence (a pair is two sequences)
    prompt_len: int = 512  # GRPO, PPO
    completion_len: int = 256  # GRPO, PPO
    grad_accum: int = 8  # micro-batches per optimizer step
    generation_batch: int = 8  # GRPO, PPO: sequences generated at once per process (batch_size x grad accumulation)
    kl: bool = True  # a reference model is needed (kl_coef > 0)


def estimate(arch: Arch, s: Setup) -> dict[str, float]:
    """Peak bytes per process, by part.

    peak = weights + reference + optimizer + max(backward, generation) [+ DDP's buckets]
    backward = activations + gradients with gradient accumulation, else max(activations, gradients)

    The three under max() do not peak together: the backward pass frees activations as it fills gradients (with
    gradient accumulation, though, the gradients of earlier micro-batches stay: activations + gradients), and
    GRPO generates between optimizer steps, when there are neither. DDP copies the gradients into its all-reduce
    buckets. ZeRO-2 shards gradients and optimizer states over the GPUs, ZeRO-3 and FSDP shard everything; to
    generate without vLLM, ZeRO-3 gathers the whole weights on each GPU (TRL's default,
    --ds3_gather_for_generation) while FSDP2 gathers one layer at a time, as in training.
    """
    act_bytes = 4 if s.device == "cpu" else 2
    shard_w = s.gpus if s.sharding in ("zero3", "fsdp") else 1
    shard_go = s.gpus if s.sharding in ("zero2", "zero3", "fsdp") else 1
    P = arch.params
    if s.tuning == "full":
        kind = "fp32" if s.device == "cpu" else "bf16" if s.sharding == "none" else "deepspeed_bf16"
        w, g, o = BYTES[kind]
        whole_weights, grads, optimizer = P * w, P * g, P * o
        reference = P * w if s.kl else 0.0  # a second copy; LoRA's reference is its base with the adapters off
    else:
        T = arch.lora_params(s.lora_r)
        w, g, o = BYTES["lora_adapter"]
        if s.tuning == "lora":
            base = P * act_bytes
        else:
            base = arch.linear_params * NF4_BYTES + arch.other_params * act_bytes
        whole_weights, grads, optimizer, reference = base + T * w, T * g, T * o, 0.0
    if s.method == "ppo":  # the value head: one linear layer on the last hidden state, trained in full
        value_head = arch.hidden + 1
        whole_weights, grads, optimizer = whole_weights + value_head * w, grads + value_head * g, \
            optimizer + value_head * o
    lora = s.tuning != "full"
    # DPO: chosen and rejected of one pair per micro-batch; GRPO and PPO: one prompt + completion per micro-batch
    tokens = 2 * s.seq_len if s.method == "dpo" else s.prompt_len + s.completion_len
    one_layer = arch.layer_activation_bytes(act_bytes, s.lora_r if lora else 0, dropout=s.method == "grpo")
    if s.checkpointing:  # every layer's input kept; one layer's activations rebuilt at a time
        layers = tokens * (arch.layers * arch.hidden * act_bytes + one_layer)
    else:
        layers = tokens * arch.layers * one_layer
    tiles, tile_bytes = TILES[s.device]
    lm_head = tiles * min(tokens, TILE_TOKENS) * min(arch.vocab, TILE_VOCAB) * tile_bytes
    if s.method == "ppo":  # PPO's own loss builds the answer's fp32 logits whole (no fused head)
        lm_head = PPO_LOGIT_COPIES * s.completion_len * arch.vocab * 4
    lm_head += tokens * arch.hidden * 4  # the fp32 gradient of the last hidden states
    if s.tuning == "full":  # and the fp32 gradient of the LM head's weight, when it trains
        lm_head += arch.vocab * arch.hidden * 4
    activations = layers + lm_head
    generation = 0.0
    if s.method in ("grpo", "ppo"):
        kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * act_bytes
        generation = s.generation_batch * (s.prompt_len + s.completion_len) * kv_per_token
        if s.sharding == "zero3":  # TRL and PPO gather the whole weights to generate (FSDP2 goes layer by layer)
            generation += whole_weights * (1 - 1 / shard_w)
    if s.method == "ppo":  # then the rollout's forward passes (no gradients), a micro-batch at a time
        generation = max(generation, PPO_ROLLOUT_COPIES * s.completion_len * arch.vocab * 4)
    parts = {
        "weights": whole_weights / shard_w, "reference": reference / shard_w, "optimizer": optimizer / shard_go,
        "gradients": grads / shard_go, "activations": activations, "generation": generation,
        "ddp_buckets": grads if s.sharding == "none" and s.gpus > 1 else 0.0,
    }
    # with gradient accumulation the gradients of earlier micro-batches stay while the next one's activations build
    backward = activations + parts["gradients"] if s.grad_accum > 1 else max(activations, parts["gradients"])
    parts["total"] = (parts["weights"] + parts["reference"] + parts["optimizer"] + parts["ddp_buckets"]
                      + max(backward, generation))
    return parts


# --- measuring ------------------------------------------------------------------------------------------------

MEASURED_ROWS = [
    {"method": m, "tuning": t, "checkpointing": c}
    for m in ("dpo", "grpo", "ppo") for t in ("full", "lora") for c in (True, False)
]
# Fixed lengths, so that the formula knows the token counts: DPO pairs of 256-token sequences (128 prompt + 128
# answer); GRPO 128-token prompts and 64-token completions (min_new_tokens forces the length), 4 per group.
DPO_PROMPT, DPO_ANSWER = 128, 128
GRPO_PROMPT, GRPO_COMPLETION, GRPO_GROUP = 128, 64, 4


def measured_setup(row: dict) -> Setup:
    """The Setup a measured row ran: fp32, one process, the fixed lengths above."""
    return Setup(
        method=row["method"], tuning=row["tuning"], sharding="none", device="cpu",
        checkpointing=row["checkpointing"], seq_len=DPO_PROMPT + DPO_ANSWER, prompt_len=GRPO_PROMPT,
        completion_len=GRPO_COMPLETION, generation_batch=GRPO_GROUP,
        grad_accum=1 if row["method"] == "dpo" else GRPO_GROUP,
    )  # PPO: batch 1 x GRPO_GROUP micro-batches, so that its mini-batch (generated at once) is GRPO's group


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _text_of(tokenizer, n_tokens: int, seed: int) -> str:
    """Text that tokenizes to about n_tokens tokens."""
    base = f"def f{seed}(x):\n    return [i * {seed} for i in range(x) if i % 3]\n"
    ids = tokenizer(base * (n_tokens // 8 + 8), add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def measure_one(row: dict, model_path: str, steps: int) -> dict:
    """One row in this process: build the trainer as the toolkit does, train, report peak memory."""
    import peft  # noqa: F401
    import torch  # noqa: F401  (imported before the baseline: libraries are not training memory)
    import trl  # noqa: F401
    from datasets import Dataset

    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.config.run_folder import RunFolder
    from qrl.models.loading import load_tokenizer
    from qrl.training.trl import build_dpo_trainer, build_grpo_trainer

    tokenizer = load_tokenizer(model_path)
    tmp = tempfile.mkdtemp()
    argv = ["--base_model", model_path, "--output_dir", tmp, "--max_steps", str(steps), "--save_steps", "100000",
            "--eval_steps", "0", "--batch_size", "1", "--learning_rate", "1e-5", "--max_seq_length", "1024"]
    argv += [] if row["tuning"] == "lora" else ["--no_peft"]
    argv += [] if row["checkpointing"] else ["--gradient_checkpointing", "false"]
    folder = RunFolder(Path(tmp) / "mem")
    if row["method"] == "dpo":
        cfg = parse_config(RL_SECTIONS, argv + ["--use_dpo", "--gradient_accumulation_steps", "1"])
        rows = [{"prompt": _text_of(tokenizer, DPO_PROMPT, i), "chosen": _text_of(tokenizer, DPO_ANSWER, i + 1),
                 "rejected": _text_of(tokenizer, DPO_ANSWER, i + 2)} for i in range(steps)]
        baseline = _status_kb("VmRSS")
        trainer = build_dpo_trainer(cfg, model_path, tokenizer, Dataset.from_list(rows), None, folder, "mem", [])
    elif row["method"] == "grpo":
        cfg = parse_config(RL_SECTIONS, argv + [
            "--test_case_rewards_only", "--gradient_accumulation_steps", str(GRPO_GROUP),
            "--num_generations", str(GRPO_GROUP), "--max_prompt_length", str(GRPO_PROMPT),
            "--max_completion_length", str(GRPO_COMPLETION),
        ])
        rows = [{"prompt": _text_of(tokenizer, GRPO_PROMPT, i)} for i in range(steps * 2)]

        def distinct_characters(completions, **_) -> list[float]:  # a stand-in reward: memory does not depend on it
            return [float(len(set(c))) for c in completions]

        baseline = _status_kb("VmRSS")
        trainer = build_grpo_trainer(cfg, model_path, tokenizer, Dataset.from_list(rows), None,
                                     [distinct_characters], folder, "mem", [])
        trainer.generation_config.min_new_tokens = GRPO_COMPLETION  # every completion at full length
        trainer.generation_kwargs["min_new_tokens"] = GRPO_COMPLETION
    if row["method"] == "ppo":
        baseline, trainer = _ppo_trainer(argv, model_path, tokenizer, folder, steps)
    loaded = _status_kb("VmHWM")
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    import time

    start = time.perf_counter()
    trainer.train()
    peak = _status_kb("VmHWM")
    return {**row, "baseline_mb": baseline / 1024, "peak_mb": peak / 1024, "training_mb": (peak - baseline) / 1024,
            "load_peak_mb": (loaded - baseline) / 1024,
            "trainable_params": trainable, "s_per_step": (time.perf_counter() - start) / steps}


def _ppo_trainer(argv: list[str], model_path: str, tokenizer, folder, steps: int):
    """The toolkit's PPO as run_rl.py builds it, on prompts of GRPO_PROMPT tokens and answers forced to
    GRPO_COMPLETION; a stand-in reward (memory does not depend on it). Returns the baseline and the trainer."""
    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.training.ppo import PPOTrainer, ppo_config
    from qrl.training.trl import peft_config

    cfg = parse_config(RL_SECTIONS, argv + [
        "--rl_algorithm", "ppo", "--gradient_accumulation_steps", str(GRPO_GROUP), "--ppo_epochs", "1",
        "--max_prompt_length", str(GRPO_PROMPT), "--max_completion_length", str(GRPO_COMPLETION),
    ])
    rows = [{"prompt": _text_of(tokenizer, GRPO_PROMPT, i)} for i in range(steps * GRPO_GROUP)]

    def distinct_characters(completions, **_) -> list[float]:
        return [float(len(set(c))) for c in completions]

    baseline = _status_kb("VmRSS")
    trainer = PPOTrainer(model_path, ppo_config(cfg, folder, "mem"), tokenizer, distinct_characters, rows,
                         peft_config=peft_config(cfg))
    trainer.sampling.min_new_tokens = GRPO_COMPLETION  # every answer at full length
    return baseline, trainer


# glibc keeps freed blocks for reuse, so a process's resident memory runs above its live tensors. With a fixed
# mmap threshold every large block goes back to the system when freed: resident memory then follows the tensors.
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure_all(model_path: str, steps: int, methods: list[str]) -> list[dict]:
    """Every row of ``methods`` twice, each in a fresh process: with glibc's default allocator, and with large blocks
    returned."""
    out = []
    for row in [r for r in MEASURED_ROWS if r["method"] in methods]:
        result = {}
        for key, extra_env in (("training_mb", {}), ("training_mb_returned", RETURNING_MALLOC)):
            cmd = [sys.executable, __file__, "--child", json.dumps(row), "--base_model", model_path,
                   "--steps", str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **extra_env})
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"measuring {row} failed:\n{proc.stderr[-3000:]}")
            one = json.loads(lines[-1][len("RESULT "):])
            result = {**one, **result, key: one["training_mb"]}
            print(f"{_row_name(row):45s} {one['training_mb']:6.0f} MB over a {one['baseline_mb']:.0f} MB baseline "
                  f"({one['s_per_step']:.0f} s/step){' (large blocks returned)' if extra_env else ''}", flush=True)
        out.append(result)
    return out


# --- the tables of docs/memory.md --------------------------------------------------------------------------------

def _row_name(row: dict) -> str:
    tuning = "full fine-tuning" if row["tuning"] == "full" else "LoRA r=16"
    return f"{row['method'].upper()}, {tuning}, checkpointing {'on' if row['checkpointing'] else 'off'}"


def check_table(rows: list[dict]) -> str:
    """Measured against the formula, row by row."""
    arch = ARCHS["SmolLM2-135M"]
    lines = [
        "| embedded model, fp32, CPU | measured MB | measured MB, large blocks returned | formula MB "
        "| formula / measured | formula / measured, returned |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        est = estimate(arch, measured_setup(row))["total"] / 2**20
        plain, returned = row["training_mb"], row["training_mb_returned"]
        lines.append(f"| {_row_name(row)} | {plain:.0f} | {returned:.0f} | {est:.0f} | {est / plain:.2f} "
                     f"| {est / returned:.2f} |")
    return "\n".join(lines)


GPU_COUNTS = (1, 2, 4, 8)
GPU_CONFIGS = [
    ("full, DDP", "full", "none"),
    ("full, ZeRO-2", "full", "zero2"),
    ("full, ZeRO-3", "full", "zero3"),
    ("full, FSDP", "full", "fsdp"),
    ("LoRA, DDP", "lora", "none"),
    ("LoRA, ZeRO-3", "lora", "zero3"),
    ("LoRA, FSDP", "lora", "fsdp"),
    ("QLoRA, DDP", "qlora", "none"),
]
CUDA_OVERHEAD = 1.0 * GIB  # CUDA context, kernels and allocator slack, per GPU


def gpu_table(gpu_memory_gib: int = 80) -> str:
    """Estimated GiB per GPU; over gpu_memory_gib is marked, since it does not fit."""
    head = " | ".join(f"DPO {n}" for n in GPU_COUNTS) + " | " + " | ".join(f"GRPO {n}" for n in GPU_COUNTS)
    lines = [f"| model | configuration | {head} |", "|---|---|" + "---|" * (2 * len(GPU_COUNTS))]
    for name, arch in ARCHS.items():
        if name == "SmolLM2-135M":
            continue
        for label, tuning, sharding in GPU_CONFIGS:
            cells = []
            for method in ("dpo", "grpo"):
                for n in GPU_COUNTS:
                    gib = (estimate(arch, Setup(method, tuning, sharding, gpus=n))["total"] + CUDA_OVERHEAD) / GIB
                    cells.append(f"{gib:.0f}" if gib <= gpu_memory_gib else f"~~{gib:.0f}~~")
            lines.append(f"| {name} ({arch.params / 1e9:.2f}B) | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# PPO under the launches it runs with (FSDP and QLoRA it refuses); the reference is LoRA's base, or a copy
PPO_CONFIGS = [c for c in GPU_CONFIGS if "FSDP" not in c[0] and c[1] != "qlora"]


def ppo_table(gpu_memory_gib: int = 80) -> str:
    """PPO's estimated GiB per GPU: policy, value head and reference (full fine-tuning), for 1 to 8 GPUs."""
    head = " | ".join(f"PPO {n}" for n in GPU_COUNTS)
    lines = [f"| model | configuration | {head} |", "|---|---|" + "---|" * len(GPU_COUNTS)]
    for name, arch in ARCHS.items():
        if name == "SmolLM2-135M":
            continue
        for label, tuning, sharding in PPO_CONFIGS:
            cells = []
            for n in GPU_COUNTS:
                gib = (estimate(arch, Setup("ppo", tuning, sharding, gpus=n))["total"] + CUDA_OVERHEAD) / GIB
                cells.append(f"{gib:.0f}" if gib <= gpu_memory_gib else f"~~{gib:.0f}~~")
            lines.append(f"| {name} ({arch.params / 1e9:.2f}B) | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_tables(rows: list[dict], machine: str) -> None:
    text = TABLES.read_text(encoding="utf-8")
    for marker, body in (("memory:measured", f"Measured on {machine}.\n\n" + check_table(rows)),
                         ("memory:estimate", gpu_table()), ("memory:ppo", ppo_table())):
        pattern = re.compile(rf"(<!-- {marker}:start.*?-->\n).*?(<!-- {marker}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/memory.md has no <!-- {marker}:start --> ... <!-- {marker}:end --> block")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    TABLES.write_text(text, encoding="utf-8")


def torch_version() -> str:
    import torch

    return torch.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="only rewrite docs/memory.md's tables from saved results")
    parser.add_argument("--only", nargs="+", default=["dpo", "grpo", "ppo"], choices=["dpo", "grpo", "ppo"],
                        help="measure these methods' rows; the others keep their saved numbers")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = parser.parse_args()
    if args.table:
        saved = json.loads(RESULTS.read_text())
        update_tables(saved["rows"], saved["machine"])
        return
    if args.base_model is None:
        from qrl.models.embedded import ensure_embedded_model

        args.base_model = str(ensure_embedded_model())
    if args.child:
        print("RESULT " + json.dumps(measure_one(json.loads(args.child), args.base_model, args.steps)), flush=True)
        return
    rows = measure_all(args.base_model, args.steps, args.only)
    machine = f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch_version()} fp32 on the CPU"
    if RESULTS.is_file():  # the methods not measured now keep their saved rows
        kept = [r for r in json.loads(RESULTS.read_text())["rows"] if r["method"] not in args.only]
        rows = sorted(kept + rows, key=lambda r: MEASURED_ROWS.index({k: r[k] for k in MEASURED_ROWS[0]}))
        if kept:
            machine = json.loads(RESULTS.read_text())["machine"] + f"; {', '.join(args.only).upper()}: {machine}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "steps": args.steps, "rows": rows,
                                   "setups": [asdict(measured_setup(r)) for r in rows]}, indent=2) + "\n")
    print(check_table(rows))
    update_tables(rows, machine)


if __name__ == "__main__":
    main()
