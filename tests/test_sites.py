from replab import sites


def test_catalog_has_the_five_sites():
    assert set(sites.SITE_NAMES) == {"CHI@TACC", "CHI@UC", "KVM@TACC", "CHI@NCAR", "local"}


def test_only_tacc_and_uc_run_an_object_store():
    stores = {n for n, s in sites.SITES.items() if s.has_object_store}
    assert stores == {"CHI@TACC", "CHI@UC"}
    assert sites.SITES["KVM@TACC"].storage_site == "CHI@TACC"
    for s in sites.SITES.values():
        if s.kind != sites.LOCAL:
            assert sites.SITES[s.storage_site].has_object_store, s.name


def test_kinds_machines_and_defaults():
    for s in sites.SITES.values():
        if s.kind == sites.BARE_METAL:
            assert s.node_types and not s.flavors and s.max_lease_hours == 7 * 24
        if s.kind == sites.KVM:
            assert s.flavors and not s.node_types
        if s.kind != sites.LOCAL:
            assert s.auth_url.startswith("https://") and s.auth_url.endswith("/v3")
            assert s.machine(s.default_machine) is not None
            assert all(m.gpu_vendor in sites.GPU_VENDORS for m in s.machines)
            # the default image of every machine is one the site has
            assert all(s.image_for(m.gpu_vendor) in s.images for m in s.machines), s.name
        if s.kind != sites.LOCAL and s.arch == sites.X86_64:
            assert set(s.images) == set(sites.IMAGES)
    assert sites.SITES["CHI@TACC"].machine("gpu_mi100").gpu_vendor == "amd"
    assert sites.SITES["KVM@TACC"].machine("g1.h100.pci.1").gpu_vendor == "nvidia"


def test_unknown_site_names_the_known_ones():
    try:
        sites.get_site("CHI@Mars")
    except KeyError as exc:
        assert "CHI@UC" in str(exc)
    else:
        raise AssertionError("no KeyError")


def test_ncar_is_arm64_gh200_with_the_arm64_cuda_image():
    """CHI@NCAR's GPU nodes are GH200 (ARM Grace CPU): the x86 CUDA image and the A100
    node type it used to list do not exist there (Chameleon newsletter, Sept. 2026)."""
    ncar = sites.SITES["CHI@NCAR"]
    assert ncar.arch == sites.ARM64
    assert ncar.default_machine == "gpu_gh200_96gb"
    assert ncar.machine("gpu_a100_pcie") is None
    assert ncar.images == (sites.IMAGE_CUDA_ARM64,)
    assert ncar.image_for("nvidia") == "CC-Ubuntu24.04-CUDA-ARM64"
    assert sites.IMAGE_CUDA not in ncar.images
    assert sites.SITES["CHI@UC"].image_for("nvidia") == sites.IMAGE_CUDA
