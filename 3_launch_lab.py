# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3 · Launch the lab
#
# JupyterLab with your framework, and an MLflow tracking server whose runs live in a
# database on the node's disk (backed up to the `-backups` bucket) and whose artifacts live
# in the object store's `-artifacts` bucket, so nothing is lost when the lease ends.
#
# - `site=local`: the services run as local processes on 127.0.0.1.
# - Chameleon: the compose stack is uploaded to the server from `2_provision` and started
#   with `docker compose up -d --build` (`build = False`: the images already on the server,
#   e.g. `docker load`ed, are started as they are). Ports listen on the server's 127.0.0.1
#   only (`mlflow_port` / `jupyter_port` when 5000 / 8888 are taken there): reach them
#   through the SSH tunnel printed below. If the database is new, the latest backup is
#   restored first. The lab lives below the home directory host setup used (state.json).
#
# Launching again reuses a running lab. `replab lab status|stop|backup` manage it later.

# %% tags=["parameters"]
workdir: str = "work"  # experiment work directory (written by 0_configure)
example_run: bool = False  # train examples/digits against the lab (local) and show the run
mlflow_port: int = 0  # 127.0.0.1 port for MLflow, here or on the server (0: 5000)
jupyter_port: int = 0  # 127.0.0.1 port for JupyterLab (0: 8888)
build: bool = True  # build the images (False: start the ones already on the server)

# %%
from IPython.display import Markdown, display

from replab import config, lab

cfg = config.load(workdir)
info = lab.launch(cfg, mlflow_port=mlflow_port, jupyter_port=jupyter_port, build=build,
                  progress=print)
display(Markdown(lab.markdown(info)))

# %%
if example_run:
    run_id = lab.example_run(cfg, info)
    print(f"example run {run_id} logged to {info['mlflow_url']} (experiment {cfg.experiment})")
