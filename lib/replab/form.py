"""The interactive configuration form of 0_configure (ipywidgets, imported lazily).

Headless runs never construct it. Questions appear only when they apply: Advanced fields
behind a toggle, node types for bare-metal sites, flavors for KVM, CUDA only for NVIDIA,
lease fields only where the site takes a lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import config as config_mod
from . import configfields, sites
from .errors import ConfigError, ReplabError

_NONE = ""  # dropdown value meaning "the site's default"
_DEFAULTED = ("gpu_vendor", "node_type", "flavor", "image", "cuda_major")  # shown resolved


class FormNotSaved(ReplabError):
    """The cells after the form ran before the form was saved (Run All does that).

    IPython shows ``_render_traceback_``'s lines instead of a traceback: one line saying what
    to do, and Run All stops there without a red wall.
    """

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def saved_config(result) -> config_mod.Config:
    """0_configure's cells after the form: the Config, whether it came from the parameters
    (headless) or from the form once saved. Raises FormNotSaved while the form waits."""
    if isinstance(result, config_mod.Config):
        return result
    if getattr(result, "result", None) is None:
        raise FormNotSaved("waiting for the form above: fill it in and press Validate and "
                           "save, then run the cells below")
    return result.result


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
        self.problems: list[tuple[str, str]] = []  # the last save's, shown in the form
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
                options=configfields.FRAMEWORKS, description="Frameworks",
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
            "cuda_major": w.Dropdown(options=[_NONE, *map(str, configfields.CUDA_MAJORS)],
                                     description="CUDA major",
                                     value=str(init.get("cuda_major") or _NONE)),
            "storage_site": w.Dropdown(options=["auto", *sites.STORAGE_SITES],
                                       description="Storage", value=init.get("storage_site",
                                                                             "auto")),
            # 0 is the site default; no bounds in the widget (it would clamp silently):
            # the config says what the site allows, on save
            "lease_hours": w.IntText(value=int(init.get("lease_hours") or 0),
                                     description="Lease (h)"),
            "lease_start": text("Lease start", init.get("lease_start", "now"),
                                "now or 2026-12-01 09:00"),
            "mlflow_backend": w.Dropdown(options=configfields.MLFLOW_BACKENDS,
                                         description="MLflow DB",
                                         value=init.get("mlflow_backend", "sqlite")),
            "huggingface": w.Checkbox(description="Hugging Face token",
                                      value=bool(init.get("huggingface", False))),
            "github_cli": w.Checkbox(description="GitHub CLI",
                                     value=bool(init.get("github_cli", False))),
            "workdir": text("Work dir", init.get("workdir", config_mod.DEFAULT_WORKDIR), ""),
        }
        self._initial_machine = (init.get("node_type"), init.get("flavor"))
        self._refreshing = False
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

    def choices(self, key: str) -> list:
        """The values a dropdown offers now ("" is the site default)."""
        return [o[1] if isinstance(o, tuple) else o for o in self.fields[key].options]

    # -- which questions apply -----------------------------------------------------------
    def visible(self) -> list[str]:
        """Names of the fields shown now."""
        return [k for k, widget in self.fields.items() if widget.layout.display != "none"]

    def _refresh(self, _change=None) -> None:
        if self._refreshing:  # relabelling a dropdown changes it, which calls back here
            return
        self._refreshing = True
        try:
            self._show_applicable()
            self._label_defaults()
        finally:
            self._refreshing = False

    def _show_applicable(self) -> None:
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
        lease = self.fields["lease_hours"]
        lease.description = (f"Lease (h, 0: {configfields.DEFAULT_LEASE_HOURS})"
                             if site.max_lease_hours is not None else "Lease (h)")

    def _label_defaults(self) -> None:
        """Each "site default" choice of a dropdown is labelled with the value it stands for
        here (``default (gpu_rtx_6000)``), as the config would resolve it."""
        for key in _DEFAULTED:
            dd = self.fields[key]
            resolved = self._default_of(key)
            label = f"default ({resolved})" if resolved not in (None, "") else "default"
            value = dd.value
            options = [(label, _NONE), *((str(o[1] if isinstance(o, tuple) else o),) * 2
                                         for o in dd.options
                                         if (o[1] if isinstance(o, tuple) else o) != _NONE)]
            if list(dd.options) != options:
                dd.options = options
                dd.value = value

    def _default_of(self, key: str):
        """What the config makes of ``key`` left empty, the other answers as they are."""
        params = {k: v for k, v in self.parameters().items()
                  if k not in (key, "experiment", "repository")}
        try:
            cfg = config_mod.from_parameters({**params, "experiment": "preview"})
        except ConfigError:
            return None
        return getattr(cfg, key)

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
        """Validate and write the work directory (config, params, README); on a problem show
        every one in the form and write nothing. The plan is the next cells' to show."""
        from . import guide

        self.output.clear_output()
        self.problems = []
        with self.output:
            try:
                cfg = config_mod.from_parameters(self.parameters())
            except ConfigError as exc:
                self.problems = exc.problems
                print(exc)
                return None
            guide.write(cfg)
            print(f"saved {config_mod.config_path(cfg.workdir)}; now run the cells below "
                  "(Run > Run Selected Cell and All Below) for the summary and the plan")
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
