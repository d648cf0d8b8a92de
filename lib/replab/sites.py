"""The site catalog: what each Chameleon site (and ``local``) offers.

Pure data. Endpoints can be overridden per experiment through the config's ``endpoints``
section, so the same code drives another OpenStack cloud or the local test OpenStack.
"""

from __future__ import annotations

from dataclasses import dataclass

BARE_METAL = "baremetal"
KVM = "kvm"
LOCAL = "local"

IMAGE_CPU = "CC-Ubuntu24.04"
IMAGE_CUDA = "CC-Ubuntu24.04-CUDA"
IMAGE_ROCM = "CC-Ubuntu24.04-ROCm"
#: Chameleon's ARM Ubuntu 24.04 image with CUDA, made for CHI@NCAR's GH200 nodes
#: (Chameleon newsletter, September 2026: "we've created the OS image
#: CC-Ubuntu24.04-CUDA-ARM64").
IMAGE_CUDA_ARM64 = "CC-Ubuntu24.04-CUDA-ARM64"
IMAGES = (IMAGE_CPU, IMAGE_CUDA, IMAGE_ROCM)
IMAGE_FOR_VENDOR = {"nvidia": IMAGE_CUDA, "amd": IMAGE_ROCM, "none": IMAGE_CPU}

X86_64 = "x86_64"
ARM64 = "aarch64"

GPU_VENDORS = ("nvidia", "amd", "none")


@dataclass(frozen=True)
class Machine:
    """A bare-metal node type or a KVM flavor, with the GPU it carries."""

    name: str
    gpu_vendor: str  # "nvidia", "amd" or "none"
    gpu: str = ""  # model, for display


@dataclass(frozen=True)
class Site:
    name: str
    kind: str  # BARE_METAL, KVM or LOCAL
    auth_url: str | None
    # The site whose object store this site uses ("auto" storage resolves to it).
    storage_site: str | None
    s3_endpoint: str | None  # only for sites that run an object store
    images: tuple[str, ...] = IMAGES
    node_types: tuple[Machine, ...] = ()
    flavors: tuple[Machine, ...] = ()
    max_lease_hours: int | None = None  # None: no lease on this site
    default_machine: str | None = None
    region: str | None = None
    doc: str = ""
    arch: str = X86_64  # the machines' CPU architecture: the images must match it
    image_for_vendor: tuple[tuple[str, str], ...] = ()  # overrides IMAGE_FOR_VENDOR

    def image_for(self, vendor: str) -> str:
        """The default image at this site for machines of ``vendor`` ("nvidia", "amd",
        "none"): this site's own choice, else :data:`IMAGE_FOR_VENDOR`."""
        return dict(self.image_for_vendor).get(vendor) or IMAGE_FOR_VENDOR.get(vendor,
                                                                               IMAGE_CPU)

    @property
    def has_object_store(self) -> bool:
        return self.s3_endpoint is not None

    @property
    def machines(self) -> tuple[Machine, ...]:
        return self.node_types if self.kind == BARE_METAL else self.flavors

    def machine(self, name: str) -> Machine | None:
        return next((m for m in self.machines if m.name == name), None)


_TACC_S3 = "https://chi.tacc.chameleoncloud.org:7480"
_UC_S3 = "https://chi.uc.chameleoncloud.org:7480"
_WEEK = 7 * 24

SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site(
            name="CHI@TACC",
            kind=BARE_METAL,
            auth_url="https://chi.tacc.chameleoncloud.org:5000/v3",
            storage_site="CHI@TACC",
            s3_endpoint=_TACC_S3,
            node_types=(
                Machine("gpu_mi100", "amd", "AMD MI100"),
                Machine("gpu_v100", "nvidia", "NVIDIA V100"),
                Machine("gpu_p100", "nvidia", "NVIDIA P100"),
                Machine("compute_liqid", "nvidia", "NVIDIA A100 (Liqid)"),
                Machine("compute_cascadelake_r", "none"),
            ),
            max_lease_hours=_WEEK,
            default_machine="gpu_v100",
            region="CHI@TACC",
            doc="Texas Advanced Computing Center, bare metal, has an object store",
        ),
        Site(
            name="CHI@UC",
            kind=BARE_METAL,
            auth_url="https://chi.uc.chameleoncloud.org:5000/v3",
            storage_site="CHI@UC",
            s3_endpoint=_UC_S3,
            node_types=(
                Machine("gpu_rtx_6000", "nvidia", "NVIDIA Quadro RTX 6000"),
                Machine("gpu_a100_pcie", "nvidia", "NVIDIA A100 PCIe"),
                Machine("gpu_a100_nvlink", "nvidia", "NVIDIA A100 NVLink"),
                Machine("compute_liqid", "nvidia", "NVIDIA A100 (Liqid)"),
                Machine("compute_skylake", "none"),
            ),
            max_lease_hours=_WEEK,
            default_machine="gpu_rtx_6000",
            region="CHI@UC",
            doc="University of Chicago, bare metal, has an object store",
        ),
        Site(
            name="KVM@TACC",
            kind=KVM,
            auth_url="https://kvm.tacc.chameleoncloud.org:5000/v3",
            storage_site="CHI@TACC",
            s3_endpoint=None,
            flavors=(
                Machine("g1.h100.pci.1", "nvidia", "NVIDIA H100 PCIe (1 GPU)"),
                Machine("g1.v100.pci.1", "nvidia", "NVIDIA V100 PCIe (1 GPU)"),
                Machine("m1.xlarge", "none"),
                Machine("m1.large", "none"),
            ),
            max_lease_hours=_WEEK,
            default_machine="g1.h100.pci.1",
            region="KVM@TACC",
            doc="TACC's KVM cloud (virtual machines); uses CHI@TACC's object store",
        ),
        # CHI@NCAR, from Chameleon's newsletters (blog.chameleoncloud.org, May and
        # September 2026): a core site since April 2026 with 40 "Compute Zen 5" nodes (AMD
        # EPYC 4545P, no GPU; their node type name is not published there, so they are not
        # listed) and 5 NVIDIA Grace nodes, each a GH200 Grace Hopper superchip (ARM
        # Grace CPU + Hopper GPU); the ARM64 CUDA image is CC-Ubuntu24.04-CUDA-ARM64. Node
        # type gpu_gh200_96gb as leased at the site (GH200 with 96 GB HBM3). x86 images go
        # ACTIVE on these nodes but never boot.
        Site(
            name="CHI@NCAR",
            kind=BARE_METAL,
            auth_url="https://chi.hpc.ucar.edu:5000/v3",
            storage_site="CHI@TACC",
            s3_endpoint=None,
            images=(IMAGE_CUDA_ARM64,),
            node_types=(
                Machine("gpu_gh200_96gb", "nvidia", "NVIDIA GH200 Grace Hopper (ARM64)"),
            ),
            max_lease_hours=_WEEK,
            default_machine="gpu_gh200_96gb",
            region="CHI@NCAR",
            doc="NCAR, bare metal, ARM64 GH200 nodes (image CC-Ubuntu24.04-CUDA-ARM64); "
                "uses CHI@TACC's object store",
            arch=ARM64,
            image_for_vendor=(("nvidia", IMAGE_CUDA_ARM64),),
        ),
        Site(
            name="local",
            kind=LOCAL,
            auth_url=None,
            storage_site="local",
            s3_endpoint=None,
            images=(),
            max_lease_hours=None,
            doc="this machine: no lease, no server; the lab runs as local processes",
        ),
    )
}

SITE_NAMES = tuple(SITES)
STORAGE_SITES = tuple(name for name, s in SITES.items() if s.has_object_store) + ("local",)


def get_site(name: str) -> Site:
    """Return the catalog entry for ``name``; raises KeyError with the known names."""
    try:
        return SITES[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; known sites: {', '.join(SITE_NAMES)}") from None


def find_machine(name: str) -> list[tuple[str, Machine]]:
    """Every (site, machine) whose node type or flavor is called ``name`` (for hints)."""
    return [(s.name, m) for s in SITES.values() for m in s.machines if m.name == name]


__all__ = [
    "ARM64", "BARE_METAL", "KVM", "LOCAL", "GPU_VENDORS", "IMAGES", "IMAGE_CUDA_ARM64",
    "IMAGE_FOR_VENDOR", "X86_64",
    "Machine", "Site", "SITES", "SITE_NAMES", "STORAGE_SITES", "get_site", "find_machine",
]
