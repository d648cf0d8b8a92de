"""The ``gpu`` capture: accelerators as the driver sees them, and as loaded frameworks see them.

NVIDIA through ``pynvml`` (package nvidia-ml-py), imported only when an NVIDIA driver is
present; the full ``nvidia-smi -q`` text goes to an attachment when an ``artifacts_dir`` is
given. AMD through ``amdsmi`` when importable, else ``rocm-smi --json``. No GPU or no library
is an answer (``{"vendor": "none", "devices": [], "count": 0}``), not an error.

The parsers (:func:`nvidia_from_nvml`, :func:`parse_nvidia_smi_csv`, :func:`parse_rocm_smi`)
are pure functions of a pynvml-like object or of recorded text, so they are tested without a
GPU. Frameworks are looked at only when already imported, and never asked to initialize CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

from replab.capture._util import run, which
from replab.capture.registry import Context, capture

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

# NVML errors that mean "no NVIDIA GPU usable here", not a failure worth reporting.
NVML_ABSENT = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_NotFound",
               "NVMLError_NoPermission", "NVMLError_Uninitialized")
NO_GPU: dict[str, Any] = {"vendor": "none", "devices": []}


def _str(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _cuda_version(number: Any) -> str | None:
    """NVML's integer CUDA version (12040) as text ("12.4")."""
    if not isinstance(number, int) or number <= 0:
        return None
    return f"{number // 1000}.{(number % 1000) // 10}"


def nvidia_from_nvml(nvml: Any) -> dict[str, Any]:
    """The NVIDIA part of the manifest from an initialized pynvml-like module ``nvml``.

    Pure apart from the calls on ``nvml``. A field the device does not support is None;
    errors in the count or the driver version propagate (the capture records them).
    """
    nvml_error = getattr(nvml, "NVMLError", Exception)

    def get(fn_name: str, *args: Any) -> Any:
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except nvml_error as exc:  # NotSupported, FunctionNotFound (old driver), ...
            log.debug("%s: %s", fn_name, exc)
            return None

    devices = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = get("nvmlDeviceGetMemoryInfo", handle)
        capability = get("nvmlDeviceGetCudaComputeCapability", handle)
        mig = get("nvmlDeviceGetMigMode", handle)
        pci = get("nvmlDeviceGetPciInfo", handle)
        devices.append({
            "index": index,
            "name": _str(get("nvmlDeviceGetName", handle)),
            "uuid": _str(get("nvmlDeviceGetUUID", handle)),
            "memory_total": getattr(memory, "total", None),
            "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
            "mig_mode": None if not mig else {"current": "enabled" if mig[0] else "disabled",
                                             "pending": "enabled" if mig[1] else "disabled"},
            "pci_bus_id": _str(getattr(pci, "busId", None)),
        })
    return {
        "vendor": "nvidia",
        "source": "nvml",
        "driver_version": _str(nvml.nvmlSystemGetDriverVersion()),
        "cuda_driver_version": _cuda_version(get("nvmlSystemGetCudaDriverVersion")),
        "nvml_version": _str(get("nvmlSystemGetNVMLVersion")),
        "devices": devices,
    }


def parse_nvidia_smi_csv(text: str) -> dict[str, Any]:
    """``nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version,compute_cap
    --format=csv,noheader,nounits`` output as the NVIDIA part of the manifest. Pure."""
    devices, driver = [], None
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 6:
            continue
        index, name, uuid, memory, driver, capability = cells[:6]
        devices.append({
            "index": int(index) if index.isdigit() else index,
            "name": name,
            "uuid": uuid,
            "memory_total": int(float(memory) * 1024 * 1024) if _number(memory) else None,
            "compute_capability": capability if _number(capability) else None,
            "mig_mode": None,
            "pci_bus_id": None,
        })
    return {"vendor": "nvidia", "source": "nvidia-smi", "driver_version": driver,
            "cuda_driver_version": None, "nvml_version": None, "devices": devices}


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _nvidia_driver_present() -> bool:
    if not sys.platform.startswith("linux"):
        return True  # no cheap test elsewhere: let NVML answer
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def nvidia(nvml: Any = None) -> dict[str, Any] | None:
    """NVIDIA GPUs through NVML (``nvml``: a pynvml-like module, default pynvml when an NVIDIA
    driver is present), else through ``nvidia-smi``; None when there are none. Raises on a
    driver failure other than 'absent' (the capture records it)."""
    if nvml is None and _nvidia_driver_present() and importlib.util.find_spec("pynvml"):
        import pynvml as nvml
    if nvml is not None:
        nvml_error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except nvml_error as exc:
            if type(exc).__name__ not in NVML_ABSENT:
                raise
            log.debug("NVML: %s", exc)
        else:
            try:
                found = nvidia_from_nvml(nvml)
            finally:
                try:
                    nvml.nvmlShutdown()
                except nvml_error:
                    pass
            return found if found["devices"] else None
    smi = which("nvidia-smi")
    if smi is None:
        return None
    proc = run([smi, "--query-gpu=index,name,uuid,memory.total,driver_version,compute_cap",
                "--format=csv,noheader,nounits"], timeout=60)
    if proc.returncode != 0:
        log.debug("nvidia-smi exited %d: %s", proc.returncode, proc.stderr[:500])
        return None
    found = parse_nvidia_smi_csv(proc.stdout.decode("utf-8", "replace"))
    return found if found["devices"] else None


def parse_rocm_smi(text: str) -> dict[str, Any]:
    """``rocm-smi --showproductname --json`` output as the AMD part of the manifest. Pure;
    raises ValueError on text that is not JSON."""
    data = json.loads(text)
    devices = []
    for card in sorted(k for k in data if k.startswith("card")):
        fields = data[card] if isinstance(data[card], dict) else {}
        index = card[len("card"):]
        devices.append({
            "index": int(index) if index.isdigit() else index,
            "name": fields.get("Card Series") or fields.get("Card series")
            or fields.get("Card model"),
            "model": fields.get("Card model") or fields.get("Card Model"),
            "vendor": fields.get("Card vendor") or fields.get("Card Vendor"),
            "sku": fields.get("Card SKU"),
            "gfx_version": fields.get("GFX Version"),
        })
    return {"vendor": "amd", "source": "rocm-smi", "devices": devices}


def amd_from_amdsmi(amdsmi: Any) -> dict[str, Any]:
    """The AMD part of the manifest from an initialized amdsmi-like module. A field the
    device does not support is None; failing to list devices propagates."""
    def get(fn_name: str, *args: Any) -> Any:
        try:
            return getattr(amdsmi, fn_name)(*args)
        except Exception as exc:  # AmdSmiException and missing functions in old versions
            log.debug("%s: %s", fn_name, exc)
            return None

    devices, driver = [], None
    for index, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
        asic = get("amdsmi_get_gpu_asic_info", handle) or {}
        vram = get("amdsmi_get_gpu_vram_info", handle) or {}
        driver = driver or (get("amdsmi_get_gpu_driver_info", handle) or {}).get(
            "driver_version")
        size_mb = vram.get("vram_size")
        devices.append({
            "index": index,
            "name": asic.get("market_name"),
            "uuid": get("amdsmi_get_gpu_device_uuid", handle),
            "memory_total": size_mb * 1024 * 1024 if isinstance(size_mb, int) else None,
            "gfx_version": asic.get("target_graphics_version"),
            "device_id": asic.get("device_id"),
        })
    return {"vendor": "amd", "source": "amdsmi", "driver_version": driver, "devices": devices}


def amd() -> dict[str, Any] | None:
    """AMD GPUs through amdsmi, else ``rocm-smi``; None when there are none."""
    if importlib.util.find_spec("amdsmi") is not None:
        import amdsmi

        try:
            amdsmi.amdsmi_init()
        except Exception as exc:  # no driver loaded: no AMD GPU to speak of
            log.debug("amdsmi: %s", exc)
        else:
            try:
                found = amd_from_amdsmi(amdsmi)
            finally:
                try:
                    amdsmi.amdsmi_shut_down()
                except Exception:
                    pass
            return found if found["devices"] else None
    smi = which("rocm-smi")
    if smi is None:
        return None
    proc = run([smi, "--showproductname", "--json"], timeout=60)
    if proc.returncode != 0:
        log.debug("rocm-smi exited %d: %s", proc.returncode, proc.stderr[:500])
        return None
    found = parse_rocm_smi(proc.stdout.decode("utf-8", "replace"))
    return found if found["devices"] else None


def torch_view(torch: Any) -> dict[str, Any]:
    """What an imported ``torch`` says about its build and devices. Device names are read
    only when CUDA is already initialized, so a capture never creates a CUDA context."""
    info: dict[str, Any] = {
        "version": str(torch.__version__),
        "cuda": getattr(torch.version, "cuda", None),
        "hip": getattr(torch.version, "hip", None),
        "git_version": getattr(torch.version, "git_version", None),
    }
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        info["cudnn"] = None
    try:
        nccl = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    except Exception:
        info["nccl"] = None
    initialized = bool(torch.cuda.is_initialized())
    info["cuda_initialized"] = initialized
    if initialized:
        count = torch.cuda.device_count()
        info["device_count"] = count
        info["devices"] = [
            {"name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
            for i in range(count)
        ]
    return info


def tensorflow_view(tf: Any) -> dict[str, Any]:
    """What an imported ``tensorflow`` says about its build and GPUs."""
    info: dict[str, Any] = {"version": str(tf.__version__)}
    try:
        build = dict(tf.sysconfig.get_build_info())
        info["build"] = {k: str(v) for k, v in sorted(build.items())}
    except Exception:
        info["build"] = None
    try:
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:
        info["gpus"] = None
    return info


def frameworks() -> dict[str, Any]:
    """The views of the frameworks already imported (none is imported here)."""
    out: dict[str, Any] = {}
    views = {"torch": torch_view, "tensorflow": tensorflow_view}
    for name, view in views.items():
        module = sys.modules.get(name)
        if module is None:
            continue
        try:
            out[name] = view(module)
        except Exception as exc:  # a half-imported or unusual build: say so, keep going
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    jax = sys.modules.get("jax")
    if jax is not None:  # jax.devices() would start a backend and grab memory: version only
        out["jax"] = {"version": str(getattr(jax, "__version__", None))}
    return out


@capture("gpu")
def gpu_info(ctx: Context) -> dict[str, Any]:
    """GPUs (NVIDIA, else AMD) and the frameworks' view of them. No GPU is not an error."""
    found = nvidia() or amd() or dict(NO_GPU)
    found["count"] = len(found["devices"])
    smi = which("nvidia-smi") if found["vendor"] == "nvidia" else None
    if smi and ctx.option("nvidia_smi", bool(ctx.option("artifacts_dir"))):
        proc = run([smi, "-q"], timeout=60)
        found["nvidia_smi_attachment"] = ctx.attach("nvidia-smi-q.txt", proc.stdout)
    found["frameworks"] = frameworks()
    return found
