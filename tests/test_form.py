"""The interactive form, driven headless (ipywidgets builds without a front end)."""

import pytest

from replab import config, configfields, form

pytest.importorskip("ipywidgets")


def test_basic_mode_asks_four_questions_and_advanced_shows_what_applies(tmp_path):
    f = form.ConfigForm({"workdir": str(tmp_path)})
    assert f.visible() == ["experiment", "repository", "frameworks", "site"]
    f.mode.value = "Advanced"
    f.fields["site"].value = "CHI@UC"
    shown = set(f.visible())
    assert {"node_type", "image", "cuda_major", "lease_hours", "storage_site"} <= shown
    assert "flavor" not in shown
    assert "gpu_rtx_6000" in f.choices("node_type")
    f.fields["site"].value = "KVM@TACC"
    assert "flavor" in f.visible() and "node_type" not in f.visible()
    assert "g1.h100.pci.1" in f.choices("flavor")
    f.fields["site"].value = "local"
    shown = set(f.visible())
    assert not shown & {"node_type", "flavor", "image", "lease_hours", "cuda_major"}
    f.fields["site"].value = "CHI@TACC"
    f.fields["gpu_vendor"].value = "amd"
    assert f.choices("node_type") == ["", "gpu_mi100"]
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


def test_advanced_lease_zero_is_the_site_default_not_one_hour(tmp_path):
    f = form.ConfigForm({"workdir": str(tmp_path), "lease_hours": 0, "experiment": "lease"})
    f.mode.value = "Advanced"
    assert f.fields["lease_hours"].value == 0
    hours = configfields.DEFAULT_LEASE_HOURS
    assert f.fields["lease_hours"].description == f"Lease (h, 0: {hours})"
    cfg = f.save()
    assert cfg.lease_hours == configfields.DEFAULT_LEASE_HOURS
    assert config.load(tmp_path).lease_hours == configfields.DEFAULT_LEASE_HOURS


def test_save_shows_every_problem_in_the_form_and_writes_nothing(tmp_path, capsys):
    f = form.ConfigForm({"workdir": str(tmp_path), "experiment": "x"})
    f.mode.value = "Advanced"
    f.fields["site"].value = "CHI@UC"
    f.fields["lease_hours"].value = 500  # not clamped by the widget: refused by the config
    f.fields["lease_start"].value = "someday"
    assert f.save() is None
    assert {"lease_hours", "lease_start"} <= set(dict(f.problems))
    shown = capsys.readouterr().out  # the form's output area, without a front end
    assert "lease_hours: 500 is outside what CHI@UC allows" in shown
    assert list(tmp_path.iterdir()) == []


def test_dropdowns_show_the_default_they_stand_for(tmp_path):
    f = form.ConfigForm({"workdir": str(tmp_path)})
    f.mode.value = "Advanced"
    f.fields["site"].value = "CHI@UC"
    expected = config.from_parameters({"experiment": "e", "site": "CHI@UC",
                                       "frameworks": "pytorch"})
    assert f.fields["node_type"].value == "" and f.fields["image"].value == ""
    assert f.fields["node_type"].label == f"default ({expected.node_type})"
    assert f.fields["image"].label == f"default ({expected.image})"
    assert f.fields["gpu_vendor"].label == f"default ({expected.gpu_vendor})"
    assert f.fields["cuda_major"].label == f"default ({expected.cuda_major})"
    f.fields["node_type"].value = "gpu_a100_pcie"  # a choice keeps its own label
    assert f.fields["node_type"].label == "gpu_a100_pcie"
    assert f.parameters()["node_type"] == "gpu_a100_pcie"


def test_cells_after_the_form_stop_in_one_line_until_it_is_saved(tmp_path, capsys):
    f = form.ConfigForm({"workdir": str(tmp_path)})
    with pytest.raises(form.FormNotSaved) as err:
        form.saved_config(f)
    assert err.value._render_traceback_() == [
        "waiting for the form above: fill it in and press Validate and save, then run the "
        "cells below"]
    f.fields["experiment"].value = "saved"
    cfg = f.save()
    assert form.saved_config(f) is cfg
    shown = capsys.readouterr().out.strip()
    assert shown.endswith("now run the cells below (Run > Run Selected Cell and All Below) "
                          "for the summary and the plan")
    assert "What the next notebooks" not in shown and "Markdown" not in shown
