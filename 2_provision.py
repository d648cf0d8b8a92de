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
# # 2 · Provision the GPU server
#
# Reserves the node type (bare metal) or flavor (KVM) with a floating IP, boots the server
# from the configured image on that reservation, attaches the *reserved* floating IP, waits
# for SSH, and sets the host up: Docker, the NVIDIA container toolkit or ROCm, rclone with a
# systemd mount of the data bucket, your repository, the lab files, replab itself (in a venv,
# with the server's work directory: the config and the EC2 keys only) and the hourly backup
# timer. An ssh repository URL (`git@...`) is cloned with your SSH agent forwarded: start
# one first (`eval $(ssh-agent) && ssh-add`), or use the https URL.
#
# Every resource is recorded in `<workdir>/state.json` as soon as it exists: re-running
# resumes and creates nothing twice; `5_teardown` gives it all back. `dry_run = True` lists
# every call that would be made and makes none. On `site=local` this machine is the host:
# its prerequisites are checked, nothing is reserved.

# %% tags=["parameters"]
workdir: str = "work"  # experiment work directory (written by 0_configure)
dry_run: bool = False  # list the calls only; create nothing
cloud: str = ""  # clouds.yaml entry to authenticate with (default: JupyterHub, OS_CLOUD)
clouds_file: str = ""  # a clouds.yaml file to read instead of the standard places
public_key: str = "~/.ssh/id_rsa.pub"  # SSH public key the server accepts
private_key: str = ""  # its private key, for the host setup (default: ssh-agent)
ssh_user: str = "cc"  # the image's login user (cc on Chameleon's images)
setup_host: bool = True  # set the host up after it boots
setup_skip: str = ""  # host-setup steps to leave out, comma-separated (e.g. docker)
setup_root: str = "/"  # the server's system root; another directory: files only (tests)
setup_home: str = ""  # the login user's home on the server (default: from the server)

# %%
from IPython.display import Markdown, display

from replab import config, provisioning
from replab.cloud import State

cfg = config.load(workdir)
display(Markdown(provisioning.plan_markdown(cfg, State.load(workdir), availability=True,
                                            cloud_name=cloud or None,
                                            clouds_file=clouds_file or None)))

# %%
if not dry_run:
    result = provisioning.provision_all(cfg, public_key=public_key,
                                        private_key=private_key or None,
                                        cloud_name=cloud or None,
                                        clouds_file=clouds_file or None, ssh_user=ssh_user,
                                        setup=setup_host, setup_options=dict(
                                            skip=setup_skip, root=setup_root,
                                            home=setup_home or None),
                                        progress=print)
    display(Markdown(provisioning.inventory_markdown(cfg)))
