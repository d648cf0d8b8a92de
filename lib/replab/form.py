"""The interactive configuration form of 0_configure (ipywidgets, imported lazily).

Headless runs never construct it. Questions appear only when they apply: Advanced fields
behind a toggle, node types for bare-metal sites, flavors for KVM, CUDA only for NVIDIA,
lease fields only where the site takes a lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import config as config_mod
from . import sites
from .errors import ConfigError

_NONE = ""  # dropdown value meaning "the site's default"


class ConfigForm:
    """An ipywidgets form producing a validated :class:`~replab.config.Config`.

    ``on_save(cfg)`` is called with the validated config when the user presses Save;
    validation problems are shown in the form, every one at once.
    """

    def __init__(self, initial: Mapping[str, Any] | None = None,
                 on_save: Callable[[config_mod.Config], None] | None = None):
        import ipywidgets as w

        self._w = w
        self.on_save = on_save
        self.result: config_mod.Config | None = None
        init = {k: v for k, v in (initial or {}).items() if v not in (None, "")}
        self._given = init
        text = self._text
        self.mode = w.ToggleButtons(options=["Basic", "Advanced"], value="Basic",
                                    description="Mode")
        self.fields: dict[str, Any] = {
            "experiment": text("Experiment", init.get("experiment", ""),
                               "letters, digits, _ and -"),
            "repository": text("Repository", init.get("repository", ""),
                               "https://github.com/you/project.git"),
            "frameworks": w.SelectMultiple(
                options=config_mod.FRAMEWORKS, description="Frameworks",
                value=tuple(_as_list(init.get("frameworks", ["pytorch"])))),
            "site": w.Dropdown(options=sites.SITE_NAMES, description="Site",
                               value=init.get("site", "CHI@TACC")),
            "gpu_vendor": w.Dropdown(options=[_NONE, *sites.GPU_VENDORS],
                                     description="GPU vendor",
                                     value=init.get("gpu_vendor", _NONE)),
            "node_type": w.Dropdown(options=[_NONE], description="Node type"),
            "flavor": w.Dropdown(options=[_NONE], description="Flavor"),
            "image": w.Dropdown(options=[_NONE, *sites.IMAGES], description="Image",
                                value=init.get("image", _NONE)),
            "cuda_major": w.Dropdown(options=[_NONE, *map(str, config_mod.CUDA_MAJORS)],
                                     description="CUDA major",
                                     value=str(init.get("cuda_major") or _NONE)),
            "storage_site": w.Dropdown(options=["auto", *sites.STORAGE_SITES],
                                       description="Storage", value=init.get("storage_site",
                                                                             "auto")),
            "lease_hours": w.BoundedIntText(value=init.get("lease_hours",
                                                           config_mod.DEFAULT_LEASE_HOURS),
                                            min=1, max=7 * 24, description="Lease (h)"),
            "lease_start": text("Lease start", init.get("lease_start", "now"),
                                "now or 2026-12-01 09:00"),
            "mlflow_backend": w.Dropdown(options=config_mod.MLFLOW_BACKENDS,
                                         description="MLflow DB",
                                         value=init.get("mlflow_backend", "sqlite")),
            "huggingface": w.Checkbox(description="Hugging Face token",
                                      value=bool(init.get("huggingface", False))),
            "github_cli": w.Checkbox(description="GitHub CLI",
                                     value=bool(init.get("github_cli", False))),
            "workdir": text("Work dir", init.get("workdir", config_mod.DEFAULT_WORKDIR), ""),
        }
        self._initial_machine = (init.get("node_type"), init.get("flavor"))
        self.save_button = w.Button(description="Validate and save", button_style="primary")
        self.output = w.Output()
        self.mode.observe(self._refresh, names="value")
        self.fields["site"].observe(self._refresh, names="value")
        self.fields["gpu_vendor"].observe(self._refresh, names="value")
        self.save_button.on_click(lambda _b: self.save())
        self._refresh()
        self.widget = w.VBox([self.mode, *self.fields.values(), self.save_button, self.output])

    def _text(self, label, value, placeholder):
        return self._w.Text(value=str(value), description=label, placeholder=placeholder)

    # -- which questions apply -----------------------------------------------------------
    def visible(self) -> list[str]:
        """Names of the fields shown now."""
        return [k for k, widget in self.fields.items() if widget.layout.display != "none"]

    def _refresh(self, _change=None) -> None:
        site = sites.get_site(self.fields["site"].value)
        advanced = self.mode.value == "Advanced"
        vendor = self.fields["gpu_vendor"].value
        for key, dropdown_kind in (("node_type", sites.BARE_METAL), ("flavor", sites.KVM)):
            dd = self.fields[key]
            machines = site.machines if site.kind == dropdown_kind else ()
            opts = [_NONE] + [m.name for m in machines if not vendor or m.gpu_vendor == vendor]
            keep = dd.value if dd.value in opts else _NONE
            initial = self._initial_machine[0 if key == "node_type" else 1]
            dd.options = opts
            dd.value = initial if initial in opts and keep == _NONE else keep
        shows = {
            "gpu_vendor": advanced,
            "node_type": advanced and site.kind == sites.BARE_METAL,
            "flavor": advanced and site.kind == sites.KVM,
            "image": advanced and site.kind != sites.LOCAL,
            "cuda_major": advanced and site.kind != sites.LOCAL and vendor in ("nvidia", _NONE),
            "storage_site": advanced and site.kind != sites.LOCAL,
            "lease_hours": advanced and site.max_lease_hours is not None,
            "lease_start": advanced and site.max_lease_hours is not None,
            "mlflow_backend": advanced, "huggingface": advanced, "github_cli": advanced,
            "workdir": advanced,
        }
        for key, widget in self.fields.items():
            widget.layout.display = None if shows.get(key, True) else "none"

    # -- values --------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """The flat parameters: the visible questions' answers; a hidden question keeps the
        value it was given (e.g. the notebook's ``workdir``), else takes its default."""
        out: dict[str, Any] = {k: v for k, v in self._given.items()
                               if k in config_mod.PARAMETERS and k not in self.visible()}
        for key in self.visible():
            value = self.fields[key].value
            if key == "frameworks":
                value = list(value)
            elif key == "cuda_major":
                value = int(value) if value else None
            out[key] = value
        return out

    def save(self) -> config_mod.Config | None:
        """Validate, write the work directory (config, params, README) and show the plan."""
        from IPython.display import Markdown, display

        from . import guide

        self.output.clear_output()
        with self.output:
            try:
                cfg = config_mod.from_parameters(self.parameters())
            except ConfigError as exc:
                print(exc)
                return None
            guide.write(cfg)
            display(Markdown(guide.summary_markdown(cfg) + "\n" + guide.plan_markdown(cfg)))
            print(f"saved {config_mod.config_path(cfg.workdir)}; run the next cell.")
        self.result = cfg
        if self.on_save:
            self.on_save(cfg)
        return cfg


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def configure(params: Mapping[str, Any], interactive: bool = True):
    """0_configure's step: with no experiment given and ``interactive``, show the form;
    otherwise validate ``params`` and write the work directory. Never waits for input.

    Returns the Config (or the form, when shown). Raises ConfigError on invalid parameters.
    """
    from . import guide

    if interactive and not params.get("experiment"):
        from IPython.display import display

        form = ConfigForm(params)
        display(form.widget)
        return form
    cfg = config_mod.from_parameters(params)
    guide.write(cfg)
    return cfg
