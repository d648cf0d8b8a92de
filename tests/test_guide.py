from replab import config, guide
from tests.conftest import basic

ALL = {"1_create_credentials", "2_provision", "3_launch_lab", "4_replay", "5_teardown"}


def test_plan_names_the_resources_to_be_created():
    cfg = config.build(basic("CHI@UC", experiment="mnist"))
    text = guide.plan_markdown(cfg, ALL)
    for word in ("replab-mnist", "mnist-lease", "mnist-server", "gpu_rtx_6000",
                 "CC-Ubuntu24.04-CUDA", "mnist-data", "mnist-artifacts", "CHI@UC"):
        assert word in text, word


def test_plan_for_kvm_uses_the_storage_site_and_flavor():
    cfg = config.build(basic("KVM@TACC"))
    text = guide.plan_markdown(cfg, ALL)
    assert "flavor g1.h100.pci.1" in text and "EC2 credential at CHI@TACC" in text


def test_plan_leaves_out_notebooks_not_present():
    cfg = config.build(basic("local"))
    assert [nb for nb, _ in guide.plan(cfg, {"3_launch_lab"})] == ["3_launch_lab"]
    assert "nothing yet" in guide.next_steps(cfg, set())[0]


def test_readme_has_exact_next_steps(tmp_path):
    cfg = config.build(basic("CHI@TACC", workdir=str(tmp_path)))
    text = guide.readme(cfg, ALL)
    assert f"replab series --from 1 --params {tmp_path}/params.yaml" in text
    assert "1_create_credentials.ipynb" in text
    paths = guide.write(cfg)
    assert config.from_parameters(
        __import__("yaml").safe_load(open(paths["params"]))) == cfg
