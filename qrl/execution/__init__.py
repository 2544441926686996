"""Running untrusted programs: the sandbox (warm fork servers, namespaces, limits, clean-up) and the harness, the
trusted half of a test run inside it. Nothing here imports torch, or knows of rewards."""

from qrl.execution.sandbox import Isolation, Limits, Program, RunResult, Sandbox, SandboxError, default_workers

__all__ = ["Isolation", "Limits", "Program", "RunResult", "Sandbox", "SandboxError", "default_workers"]
