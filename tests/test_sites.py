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
            assert set(s.images) == set(sites.IMAGES)
            assert all(m.gpu_vendor in sites.GPU_VENDORS for m in s.machines)
    assert sites.SITES["CHI@TACC"].machine("gpu_mi100").gpu_vendor == "amd"
    assert sites.SITES["KVM@TACC"].machine("g1.h100.pci.1").gpu_vendor == "nvidia"


def test_unknown_site_names_the_known_ones():
    try:
        sites.get_site("CHI@Mars")
    except KeyError as exc:
        assert "CHI@UC" in str(exc)
    else:
        raise AssertionError("no KeyError")
