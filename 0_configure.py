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
# # 0 · Configure the experiment
#
# Answers a few questions and writes `<workdir>/config.yaml`, which every later notebook
# reads, plus `<workdir>/README.md` with the exact next steps.
#
# - **Interactively** (JupyterHub): leave `experiment` empty and Run All; the run stops
#   after the form with one line until it is saved. Fill the form (Basic needs four
#   answers; Advanced shows the rest, empty or 0 meaning the site default), press
#   *Validate and save*, then run the cells below it for the summary and the plan.
# - **Headless**: `papermill 0_configure.ipynb out.ipynb -p experiment mnist -p site CHI@UC`
#   or `replab series --params params.yaml`. A headless run never waits for input.

# %% tags=["parameters"]
# --- Basic: these four are enough ---
experiment: str = ""  # name: letters, digits, _ and - (max 32); names every resource
repository: str = ""  # git URL: https://host/group[/subgroup]/repo.git or git@host:group/repo.git
frameworks: str = "pytorch"  # comma-separated: pytorch, lightning, tensorflow, sklearn
site: str = "CHI@TACC"  # CHI@TACC, CHI@UC, KVM@TACC, CHI@NCAR, or local (this machine)
# --- Advanced: empty (or 0) means the site's default ---
storage_site: str = "auto"  # object store: auto, CHI@TACC, CHI@UC, or local for a local site
gpu_vendor: str = ""  # nvidia, amd or none; default: from the node type / flavor
node_type: str = ""  # bare-metal node type, e.g. gpu_rtx_6000, gpu_a100_pcie, gpu_mi100
flavor: str = ""  # KVM flavor (KVM@TACC), e.g. g1.h100.pci.1
image: str = ""  # CC-Ubuntu24.04, CC-Ubuntu24.04-CUDA or CC-Ubuntu24.04-ROCm
cuda_major: int = 0  # CUDA major version for NVIDIA images: 11, 12, 13 (0: 12)
lease_hours: int = 0  # lease length in hours, at most 168 on bare metal (0: 24)
lease_start: str = "now"  # now, or an ISO date-time such as 2026-12-01 09:00
bucket_data: str = ""  # data bucket (default: <experiment>-data)
bucket_artifacts: str = ""  # MLflow artifacts bucket (default: <experiment>-artifacts)
bucket_backups: str = ""  # MLflow backups bucket (default: <experiment>-backups)
mlflow_backend: str = "sqlite"  # sqlite (one researcher) or postgresql (a team)
huggingface: bool = False  # pass a Hugging Face token into the lab
github_cli: bool = False  # install and authenticate the GitHub CLI in the lab
auth_url: str = ""  # override the site's Keystone URL (another cloud, tests)
storage_auth_url: str = ""  # override the storage site's Keystone URL
s3_endpoint: str = ""  # override the object store's S3 endpoint
region: str = ""  # override the region name
workdir: str = "work"  # experiment work directory (config, secrets, state)
interactive: bool = True  # show the form when no experiment is given

# %%
from IPython.display import Markdown, display

from replab import config, form, guide

answers = config.parameters_from(globals())
result = form.configure(answers, interactive=interactive)

# %% [markdown]
# ## Summary and plan
# If you used the form, press *Validate and save* before running this cell.

# %%
cfg = form.saved_config(result)  # stops here, in one line, while the form waits
display(Markdown(guide.summary_markdown(cfg)))
display(Markdown("### What the next notebooks will create\n\n" + guide.plan_markdown(cfg)))

# %%
display(Markdown(guide.readme(cfg).split("## Next steps", 1)[1].split("## Files", 1)[0]))
print(f"written: {config.config_path(cfg.workdir)} and {cfg.workdir_path / 'README.md'}")
