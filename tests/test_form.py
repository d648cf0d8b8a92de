"""The interactive form, driven headless (ipywidgets builds without a front end)."""

import pytest

from replab import config, form

pytest.importorskip("ipywidgets")


def test_basic_mode_asks_four_questions_and_advanced_shows_what_applies(tmp_path):
    f = form.ConfigForm({"workdir": str(tmp_path)})
    assert f.visible() == ["experiment", "repository", "frameworks", "site"]
    f.mode.value = "Advanced"
    f.fields["site"].value = "CHI@UC"
    shown = set(f.visible())
    assert {"node_type", "image", "cuda_major", "lease_hours", "storage_site"} <= shown
    assert "flavor" not in shown
    assert "gpu_rtx_6000" in f.fields["node_type"].options
    f.fields["site"].value = "KVM@TACC"
    assert "flavor" in f.visible() and "node_type" not in f.visible()
    assert "g1.h100.pci.1" in f.fields["flavor"].options
    f.fields["site"].value = "local"
    shown = set(f.visible())
    assert not shown & {"node_type", "flavor", "image", "lease_hours", "cuda_major"}
    f.fields["site"].value = "CHI@TACC"
    f.fields["gpu_vendor"].value = "amd"
    assert f.fields["node_type"].options == ("", "gpu_mi100")
    assert "cuda_major" not in f.visible()


def test_save_validates_and_writes_the_workdir(tmp_path):
    saved = []
    f = form.ConfigForm({"workdir": str(tmp_path)}, on_save=saved.append)
    f.fields["experiment"].value = "bad name"
    assert f.save() is None and not (tmp_path / "config.yaml").exists()
    f.fields["experiment"].value = "good"
    f.fields["site"].value = "CHI@UC"
    f.fields["frameworks"].value = ("sklearn",)
    cfg = f.save()
    assert saved == [cfg] and cfg.site == "CHI@UC"
    assert config.load(tmp_path) == cfg


def test_configure_headless_never_shows_a_form(tmp_path):
    cfg = form.configure({"experiment": "e", "frameworks": "sklearn", "site": "local",
                          "workdir": str(tmp_path)}, interactive=False)
    assert isinstance(cfg, config.Config)
    assert {p.name for p in tmp_path.iterdir()} == {"config.yaml", "params.yaml", "README.md"}
