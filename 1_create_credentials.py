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
# # 1 · Credentials and object storage
#
# For a Chameleon site: creates (or reuses) an **application credential** and an **EC2
# credential** at the *storage* site's Keystone, verifies both, creates the buckets
# `<experiment>-data`, `-artifacts`, `-backups`, and writes the secrets store
# `<workdir>/secrets/` (0700): `credentials.json`, `clouds.yaml`, `rclone.conf`, `lab.env`.
# For `site=local`: the lab's own secrets (Jupyter token, MLflow password) and local bucket
# directories. Re-running creates nothing new; secret values are never shown.
#
# In Chameleon's JupyterHub your session authenticates by itself. Elsewhere, name a
# `clouds.yaml` entry for the storage site with `cloud` (or set `OS_CLOUD`).

# %% tags=["parameters"]
workdir: str = "work"  # experiment work directory (written by 0_configure)
cloud: str = ""  # clouds.yaml entry to authenticate with (default: JupyterHub, OS_CLOUD)
clouds_file: str = ""  # a clouds.yaml file to read instead of the standard places
verify: bool = True  # authenticate with the new credentials and list buckets

# %%
from IPython.display import Markdown, display

from replab import config, credentials

cfg = config.load(workdir)
report = credentials.setup(cfg, cloud=cloud or None, clouds_file=clouds_file or None,
                           do_verify=verify, progress=print)

# %%
display(Markdown(credentials.report_markdown(report, credentials.SecretsStore(cfg.workdir))))
