"""What this machine computes fast (one answer for training and for every generation backend), and
how much memory a process has used at most: one measure for training records and pipeline stages."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def fast_bf16() -> bool:
    """bf16 pays on CUDA GPUs that support it and on CPUs with AVX512-BF16 (2x here); elsewhere
    the CPU emulates it, about 4x slower than fp32 (0.5B LoRA step 24 vs 78 tokens/s)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return "avx512_bf16" in cpuinfo()


def cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def machine() -> str:
    """The CPU as benchmark tables name it beside their figures (machines differ): model, cores,
    whether bf16 is native, and the load average at the moment of asking."""
    info = cpuinfo()
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               "unknown CPU")
    return (f"{cpu} ({os.cpu_count()} cores, avx512_bf16={'yes' if 'avx512_bf16' in info else 'no'}); "
            f"load {os.getloadavg()[0]:.1f}")


def peak_rss_mb() -> float:
    """The process's peak resident memory in MiB since the last reset (Linux VmHWM, which a pipeline
    stage resets so each reports its own), else since the process started."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_memory() -> dict[str, float]:
    """The peak resident memory, and where CUDA runs the GPU memory at most allocated, in MiB: both,
    since a 7B LoRA is judged by whether it fits the GPU and the host."""
    peaks = {"peak_memory_mb": round(peak_rss_mb(), 1)}
    if torch.cuda.is_available():
        peaks["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks
