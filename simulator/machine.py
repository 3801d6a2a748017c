"""What determines a machine's costs, as a key for its calibrated profile.

A profile is valid for the machine it was measured on: the CPU model and the instruction
sets the kernels use (AVX-512, AVX-512 BF16, AMX), the core count the ranks share, and
the torch build and backend that run the losses. Host names say none of this (every
development VM here is called ``vm``, whatever its CPU), so calibrated profiles are
filed under :func:`machine_key` instead, and a profile whose recorded fingerprint no
longer matches (a torch upgrade, another CPU) is not used for this machine.

Standard library only: reading it must not import torch (``importlib.metadata`` gives
the installed version).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from importlib import metadata

KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
)
"""CPU flags that change which kernels torch runs (``/proc/cpuinfo``)."""


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if key == "flags" and model:
                    break
    except OSError:  # not Linux: the model name from platform is all there is
        pass
    return model, flags


def fingerprint(backend: str = "gloo", accelerator: str | None = None) -> dict:
    """The facts a profile's numbers depend on; ``accelerator``: the GPU's name, if the
    profile is a GPU's."""
    model, flags = _cpuinfo()
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "absent"
    return {
        "cpu": model,
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch_version,
        "backend": backend,
        "accelerator": accelerator,
    }


def machine_key(facts: dict | None = None) -> str:
    """A file-name key: ``<cores>c-<cpu words>-<hash of the whole fingerprint>``."""
    facts = facts or fingerprint()
    name = facts.get("accelerator") or facts["cpu"]
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:8]
    return f"{facts['cores']}c-{words or 'cpu'}-{digest}"
