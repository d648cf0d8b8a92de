"""The gpu capture: no-GPU answer, NVIDIA/AMD parsing from recorded values, framework views."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types

import pytest

from replab.capture import collect
from replab.capture.gpu import (
    amd_from_amdsmi,
    frameworks,
    nvidia,
    nvidia_from_nvml,
    parse_nvidia_smi_csv,
    parse_rocm_smi,
    torch_view,
)

HAS_NVIDIA = os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


class FakeNVML:
    """A pynvml-like object holding values recorded from a 2 x H100 node (MIG on GPU 1)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's naming
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
        pass

    def __init__(self, init_error: type[Exception] | None = None):
        self.init_error = init_error
        self.shutdown_called = False

    def nvmlInit(self):  # noqa: N802
        if self.init_error:
            raise self.init_error("NVML Shared Library Not Found")

    def nvmlShutdown(self):  # noqa: N802
        self.shutdown_called = True

    def nvmlSystemGetDriverVersion(self):  # noqa: N802
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):  # noqa: N802
        return 12040

    def nvmlSystemGetNVMLVersion(self):  # noqa: N802
        return b"12.550.54.15"  # old pynvml returned bytes

    def nvmlDeviceGetCount(self):  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return f"handle{i}"

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return f"GPU-0000000{h[-1]}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return types.SimpleNamespace(total=85520809984, used=0, free=85520809984)

    def nvmlDeviceGetCudaComputeCapability(self, h):  # noqa: N802
        return (9, 0)

    def nvmlDeviceGetMigMode(self, h):  # noqa: N802
        if h == "handle0":
            raise self.NVMLError_NotSupported("Not Supported")
        return [1, 1]

    def nvmlDeviceGetPciInfo(self, h):  # noqa: N802
        return types.SimpleNamespace(busId=f"00000000:1{h[-1]}:00.0")


def test_nvidia_from_recorded_values():
    info = nvidia_from_nvml(FakeNVML())
    assert info["vendor"] == "nvidia" and info["source"] == "nvml"
    assert info["driver_version"] == "550.54.15"
    assert info["cuda_driver_version"] == "12.4"
    assert info["nvml_version"] == "12.550.54.15"
    assert len(info["devices"]) == 2
    first, second = info["devices"]
    assert first == {
        "index": 0, "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd", "memory_total": 85520809984,
        "compute_capability": "9.0", "mig_mode": None, "pci_bus_id": "00000000:10:00.0",
    }
    assert second["mig_mode"] == {"current": "enabled", "pending": "enabled"}
    json.dumps(info)


def test_nvidia_with_injected_module_shuts_down():
    nvml = FakeNVML()
    assert nvidia(nvml)["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert nvml.shutdown_called


def test_nvml_library_not_found_means_no_nvidia(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi fallback either
    assert nvidia(FakeNVML(init_error=FakeNVML.NVMLError_LibraryNotFound)) is None


def test_other_nvml_errors_propagate(monkeypatch):
    class NVMLError_GpuIsLost(FakeNVML.NVMLError):  # noqa: N801
        pass

    with pytest.raises(FakeNVML.NVMLError):
        nvidia(FakeNVML(init_error=NVMLError_GpuIsLost))


def test_nvidia_smi_csv():
    text = ("0, NVIDIA A100-SXM4-40GB, GPU-1111, 40960, 535.104.05, 8.0\n"
            "1, NVIDIA A100-SXM4-40GB, GPU-2222, 40960, 535.104.05, 8.0\n")
    info = parse_nvidia_smi_csv(text)
    assert info["driver_version"] == "535.104.05" and info["source"] == "nvidia-smi"
    assert [d["uuid"] for d in info["devices"]] == ["GPU-1111", "GPU-2222"]
    assert info["devices"][0]["memory_total"] == 40960 * 1024 * 1024
    assert info["devices"][0]["compute_capability"] == "8.0"


def test_rocm_smi_json():
    text = json.dumps({
        "card0": {"Card Series": "AMD Instinct MI100", "Card Model": "0x738c",
                  "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "D3431401",
                  "GFX Version": "gfx908"},
        "card1": {"Card series": "AMD Instinct MI100", "Card model": "0x738c",
                  "Card vendor": "AMD", "Card SKU": "D3431401", "GFX Version": "gfx908"},
    })
    info = parse_rocm_smi(text)
    assert info["vendor"] == "amd" and len(info["devices"]) == 2
    assert info["devices"][0]["name"] == "AMD Instinct MI100"
    assert info["devices"][1]["gfx_version"] == "gfx908" and info["devices"][1]["index"] == 1


def test_amdsmi_from_recorded_values():
    class AmdSmiException(Exception):
        pass

    def uuid(handle):
        if handle == "h1":
            raise AmdSmiException("not supported")
        return "abcd-ef"

    fake = types.SimpleNamespace(
        amdsmi_get_processor_handles=lambda: ["h0", "h1"],
        amdsmi_get_gpu_asic_info=lambda h: {"market_name": "AMD Instinct MI210",
                                            "device_id": "0x740f",
                                            "target_graphics_version": "gfx90a"},
        amdsmi_get_gpu_vram_info=lambda h: {"vram_size": 65520, "vram_type": "HBM2e"},
        amdsmi_get_gpu_driver_info=lambda h: {"driver_name": "amdgpu",
                                              "driver_version": "6.7.0"},
        amdsmi_get_gpu_device_uuid=uuid,
    )
    info = amd_from_amdsmi(fake)
    assert info["driver_version"] == "6.7.0" and info["source"] == "amdsmi"
    assert info["devices"][0]["memory_total"] == 65520 * 1024 * 1024
    assert info["devices"][0]["uuid"] == "abcd-ef" and info["devices"][1]["uuid"] is None


@pytest.mark.skipif(HAS_NVIDIA, reason="this machine has an NVIDIA GPU")
def test_no_gpu_is_vendor_none():
    manifest = collect(["gpu"])
    assert not manifest["errors"] and not manifest["skipped"]
    info = manifest["captures"]["gpu"]
    assert info["vendor"] in ("none", "amd")
    if info["vendor"] == "none":
        assert info["devices"] == [] and info["count"] == 0
    assert "pynvml" not in sys.modules or HAS_NVIDIA


@pytest.mark.skipif(not HAS_NVIDIA, reason="needs an NVIDIA GPU")
def test_real_nvidia_gpu(tmp_path):
    manifest = collect(["gpu"], artifacts_dir=str(tmp_path))
    info = manifest["captures"]["gpu"]
    assert info["vendor"] == "nvidia" and info["devices"]
    assert info["count"] == len(info["devices"])
    assert all(d["uuid"].startswith(("GPU-", "MIG-")) for d in info["devices"])
    assert info["driver_version"] and info["cuda_driver_version"]
    if shutil.which("nvidia-smi"):
        assert (tmp_path / "nvidia-smi-q.txt").read_text().strip()
        assert info["nvidia_smi_attachment"] == "nvidia-smi-q.txt"


def fake_torch(initialized: bool):
    def boom(*args):
        raise AssertionError("must not touch CUDA devices before CUDA is initialized")

    cuda = types.SimpleNamespace(
        is_initialized=lambda: initialized,
        device_count=lambda: 1 if initialized else boom(),
        get_device_name=(lambda i: "NVIDIA H100") if initialized else boom,
        get_device_capability=(lambda i: (9, 0)) if initialized else boom,
        nccl=types.SimpleNamespace(version=lambda: (2, 21, 5)),
    )
    return types.SimpleNamespace(
        __version__="2.4.0+cu124",
        version=types.SimpleNamespace(cuda="12.4", hip=None, git_version="abc"),
        backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 90100)),
        cuda=cuda,
    )


def test_torch_view_does_not_initialize_cuda():
    view = torch_view(fake_torch(initialized=False))
    assert view == {"version": "2.4.0+cu124", "cuda": "12.4", "hip": None, "git_version": "abc",
                    "cudnn": 90100, "nccl": "2.21.5", "cuda_initialized": False}


def test_torch_view_lists_devices_once_initialized():
    view = torch_view(fake_torch(initialized=True))
    assert view["devices"] == [{"name": "NVIDIA H100", "capability": "9.0"}]


def test_frameworks_only_when_already_imported(monkeypatch):
    for name in ("torch", "tensorflow", "jax"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert frameworks() == {}
    monkeypatch.setitem(sys.modules, "torch", fake_torch(initialized=False))
    tf = types.SimpleNamespace(
        __version__="2.16.1",
        sysconfig=types.SimpleNamespace(get_build_info=lambda: {"cuda_version": "12.3",
                                                                "is_cuda_build": True}),
        config=types.SimpleNamespace(list_physical_devices=lambda kind: []),
    )
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    views = frameworks()
    assert views["torch"]["version"] == "2.4.0+cu124"
    assert views["tensorflow"] == {"version": "2.16.1", "gpus": [],
                                   "build": {"cuda_version": "12.3", "is_cuda_build": "True"}}
