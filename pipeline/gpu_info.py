"""What GPU this process runs on: its model name and compute capability, read once.

Both go into decisions that must agree across every pod of a deployment: the key of derived artefacts
(an optimised graph is valid for a GPU model, not for one card) and whether fp16 pays (tensor cores).
The model name comes from NVML (nvidia-ml-py, in the `gpu` extra), else from nvidia-smi. It is not
NVIDIA_VISIBLE_DEVICES: in Kubernetes that holds the card's UUID, so a `warmup prepare` Job and every
serving pod would key their graphs differently and each pod would rebuild them at start (measured on an
H100: 22-28 s to ready instead of under 4).
"""

from __future__ import annotations

import functools
import subprocess


@functools.lru_cache(maxsize=8)
def _query(device_id: int) -> tuple[str, str]:
    """(model name, `major.minor`) of device `device_id`; empty strings where neither NVML nor nvidia-smi answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return (name.decode() if isinstance(name, bytes) else str(name)), f"{major}.{minor}"
    except Exception:  # no library, no driver, no device
        pass
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(device_id), "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "", ""
    name, _, capability = (out.splitlines()[0] if out else "").rpartition(",")
    return name.strip(), capability.strip()


def gpu_model(device_id: int) -> str:
    """`NVIDIA H100 80GB HBM3 (9.0)`: the model and compute capability of the device; empty without one."""
    name, capability = _query(device_id)
    return f"{name} ({capability})" if name else ""


def gpu_compute_capability(device_id: int) -> str:
    """`major.minor` of the GPU; empty when neither NVML nor nvidia-smi answers."""
    return _query(device_id)[1]
