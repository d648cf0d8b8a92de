"""What a configuration will do: the summary, the plan per notebook, the next steps.

Pure functions of a :class:`~replab.config.Config` returning text (markdown) or data, so
0_configure can display them and write ``<workdir>/README.md``.
"""

from __future__ import annotations

from .config import Config


def summary(cfg: Config) -> list[tuple[str, str]]:
    """(label, value) rows describing ``cfg`` for display."""
    rows = [
        ("experiment", cfg.experiment),
        ("repository", cfg.repository or "(none: the lab starts with an empty workspace)"),
        ("frameworks", ", ".join(cfg.frameworks)),
        ("site", f"{cfg.site} ({cfg.site_info.doc})"),
        ("object store", cfg.storage_site if not cfg.is_local else "this machine"),
        ("GPU vendor", cfg.gpu_vendor),
    ]
    if not cfg.is_local:
        what = "node type" if cfg.node_type else "flavor"
        rows += [
            (what, cfg.machine or ""),
            ("image", cfg.image or ""),
            ("lease", f"{cfg.lease_hours} h starting {cfg.lease_start}"),
        ]
        if cfg.cuda_major:
            rows.append(("CUDA major", str(cfg.cuda_major)))
    rows += [
        ("buckets", f"{cfg.buckets.data}, {cfg.buckets.artifacts}, {cfg.buckets.backups}"),
        ("MLflow backend", cfg.lab.mlflow_backend),
        ("Hugging Face", "on" if cfg.lab.huggingface else "off"),
        ("GitHub CLI", "on" if cfg.lab.github_cli else "off"),
        ("work directory", str(cfg.workdir_path)),
    ]
    return rows


def plan(cfg: Config, available: set[str] | None = None) -> list[tuple[str, list[str]]]:
    """(notebook, [what it will create or do]) for the notebooks after 0_configure.

    ``available``: stems of the notebooks present (default: those in the artifact); steps
    of notebooks not present are left out.
    """
    if available is None:
        from .series import default_root, find_notebooks

        available = {p.stem for p in find_notebooks(default_root())}
    return [(nb, steps) for nb, steps in _plan(cfg) if nb in available]


def _plan(cfg: Config) -> list[tuple[str, list[str]]]:
    n = cfg.names
    b = cfg.buckets
    if cfg.is_local:
        return [
            ("1_create_credentials", [
                f"lab secrets (Jupyter token, MLflow password) in {cfg.workdir}/secrets/",
                f"local bucket directories {b.data}, {b.artifacts}, {b.backups}",
            ]),
            ("2_provision", ["check this machine's prerequisites (no lease, no server)"]),
            ("3_launch_lab", [
                f"MLflow ({cfg.lab.mlflow_backend}) and JupyterLab as local processes",
                f"endpoints recorded in {cfg.workdir}/lab.json",
            ]),
            ("4_replay", ["re-run a tracked run and report the verdict"]),
            ("5_teardown", ["back up MLflow, stop the lab; buckets are kept"]),
        ]
    machine = f"{'node type' if cfg.node_type else 'flavor'} {cfg.machine}"
    return [
        ("1_create_credentials", [
            f"application credential '{n['application_credential']}' at {cfg.storage_site} "
            f"(expires with the lease)",
            f"EC2 credential at {cfg.storage_site} for its S3 API ({cfg.s3_endpoint})",
            f"buckets {b.data}, {b.artifacts}, {b.backups} at {cfg.storage_site}",
            f"secrets store {cfg.workdir}/secrets/ (clouds.yaml, rclone.conf, lab .env)",
        ]),
        ("2_provision", [
            f"lease '{n['lease']}' at {cfg.site}: 1 x {machine} + 1 floating IP, "
            f"{cfg.lease_hours} h from {cfg.lease_start}",
            f"server '{n['server']}' from image {cfg.image}",
            "host setup: Docker, " + {"nvidia": "NVIDIA container toolkit",
                                      "amd": "ROCm", "none": "no GPU stack"}[cfg.gpu_vendor]
            + f", rclone mount of {b.data}",
            f"every resource recorded in {cfg.workdir}/state.json",
        ]),
        ("3_launch_lab", [
            f"compose project '{n['lab']}': JupyterLab ({', '.join(cfg.frameworks)}) + MLflow "
            f"({cfg.lab.mlflow_backend}, artifacts in {b.artifacts})",
            f"endpoints and SSH tunnel commands in {cfg.workdir}/lab.json",
        ]),
        ("4_replay", ["re-run a tracked run and report the verdict"]),
        ("5_teardown", [
            f"back up MLflow to {b.backups}, delete server, floating IP, lease and "
            "credentials; buckets are kept unless asked",
        ]),
    ]


def _table(rows: list[tuple[str, str]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def plan_markdown(cfg: Config, available: set[str] | None = None) -> str:
    out = []
    for nb, steps in plan(cfg, available) or [("(none)", ["no later notebooks in this copy"])]:
        out.append(f"**{nb}**")
        out += [f"- {s}" for s in steps]
        out.append("")
    return "\n".join(out)


def next_steps(cfg: Config, available: set[str] | None = None) -> list[str]:
    """The exact commands to continue with this configuration."""
    wd = cfg.workdir
    later = [nb for nb, _ in plan(cfg, available)]
    if not later:
        return [f"nothing yet: this copy has no notebook after 0_configure; {wd}/config.yaml "
                "is ready for them"]
    if cfg.is_local:
        return [
            f"replab series --from 1 --params {wd}/params.yaml",
            f"or open {later[0]}.ipynb and run it cell by cell "
            f"(workdir = {wd!r})",
        ]
    return [
        f"In Chameleon's JupyterHub: open {later[0]}.ipynb, set workdir = {wd!r}, run all "
        "cells; then " + (", ".join(later[1:]) or "you are done") + ".",
        f"Headless: replab series --from 1 --params {wd}/params.yaml",
        f"Or one notebook: papermill {later[0]}.ipynb {wd}/runs/{later[0]}.ipynb "
        f"-p workdir {wd}",
    ]


def readme(cfg: Config, available: set[str] | None = None) -> str:
    """The ``<workdir>/README.md`` text for this configuration."""
    steps = "\n".join(f"{i}. `{s}`" if s.startswith(("replab", "papermill")) else f"{i}. {s}"
                      for i, s in enumerate(next_steps(cfg, available), 1))
    return (
        f"# Experiment `{cfg.experiment}`\n\n"
        "Written by `0_configure`; re-running it rewrites this file.\n\n"
        f"## Configuration\n\n{_table(summary(cfg))}\n\n"
        f"## What the next notebooks will do\n\n{plan_markdown(cfg, available)}\n"
        f"## Next steps\n\n{steps}\n\n"
        "## Files here\n\n"
        "- `config.yaml`: the validated configuration every notebook reads\n"
        "- `params.yaml`: the same, as flat parameters for `replab series --params`\n"
        "- `secrets/`: credentials (mode 0700; never commit or share)\n"
        "- `state.json`: every cloud resource created (the teardown inventory)\n"
        "- `lab.json`: the lab's URLs and tunnel commands\n"
        "- `runs/`: executed notebooks of headless runs\n"
    )


def summary_markdown(cfg: Config) -> str:
    return f"### Experiment `{cfg.experiment}`\n\n{_table(summary(cfg))}\n"


def write(cfg: Config) -> dict[str, str]:
    """Write config.yaml, params.yaml and README.md into the work directory.

    Returns {"config": path, "params": path, "readme": path}. Idempotent.
    """
    import yaml

    from . import config as config_mod

    wd = cfg.workdir_path
    wd.mkdir(parents=True, exist_ok=True)
    paths = {"config": str(config_mod.save(cfg))}
    params = wd / "params.yaml"
    params.write_text("# flat parameters for `replab series --params` (from 0_configure)\n"
                      + yaml.safe_dump(config_mod.to_parameters(cfg), sort_keys=False))
    paths["params"] = str(params)
    readme_path = wd / "README.md"
    readme_path.write_text(readme(cfg))
    paths["readme"] = str(readme_path)
    return paths
