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
# # 5 · Tear down
#
# Backs up the lab's MLflow database to the `-backups` bucket, stops the lab, deletes the
# server, releases floating IPs the lease does not own, deletes the lease, the security
# group, the keypair and the credentials. Buckets are kept unless `delete_buckets = True`.
# Idempotent: run it again any time; it shows what was deleted and what was kept, and
# `state.json` records it. If the last MLflow backup fails, nothing is stopped or deleted
# (the server's disk holds the database); fix the cause, or set `without_backup = True`.

# %% tags=["parameters"]
workdir: str = "work"  # experiment work directory
delete_buckets: bool = False  # also delete the data, artifacts and backups buckets
keep_credentials: bool = False  # keep the application and EC2 credentials
cloud: str = ""  # clouds.yaml entry to authenticate with (default: JupyterHub, OS_CLOUD)
clouds_file: str = ""  # a clouds.yaml file to read instead of the standard places
dry_run: bool = False  # show what exists; delete nothing
keep_lab: bool = False  # back the lab up but leave it running (make demo does)
without_backup: bool = False  # tear down even when the last MLflow backup fails

# %%
from IPython.display import Markdown, display

from replab import config, provisioning

cfg = config.load(workdir)
display(Markdown(provisioning.inventory_markdown(cfg)))

# %%
if not dry_run:
    result = provisioning.teardown(cfg, delete_buckets=delete_buckets,
                                   keep_credentials=keep_credentials,
                                   cloud_name=cloud or None,
                                   clouds_file=clouds_file or None, keep_lab=keep_lab,
                                   without_backup=without_backup, progress=print)
    display(Markdown(result.markdown()))
    result.check()  # stops a headless run when something could not be given back
