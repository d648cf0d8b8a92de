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
# # 4 · Replay a run to a verdict
#
# Pick a tracked run (a run id, `latest` in an experiment, or a bundle file). This notebook
# shows its record, how this machine differs from the environment it ran in, then
# re-executes it: the repository at the recorded commit, the uncommitted diff and untracked
# files restored, the environment reused or rebuilt from the lock. It ends with a verdict:
# **REPRODUCED**, **REPRODUCED_WITHIN_TOLERANCE**, **NOT_REPRODUCED**, **NOT_FAITHFUL** (the
# replay did not run the original's experiment) or **INCOMPLETE** (not enough evidence),
# naming what it compared (metrics, printed lines, output files), and the environment
# differences ranked by how likely they are to explain a mismatch. With `repeats` of 3 or
# more the original is judged against the measured run-to-run spread.
#
# With `browse_only = True` nothing is executed: use it to look at someone else's runs
# read-only, from their tracking server or from a bundle they exported
# (`replab bundle export RUN -o run.tar.gz`).

# %% tags=["parameters"]
workdir: str = "work"  # experiment work directory (lab.json gives the tracking server)
run: str = "latest"  # run id, latest (newest run of experiment), or a bundle .tar.gz
experiment: str = ""  # experiment for latest (default: the configured experiment)
tracking_uri: str = ""  # MLflow server (default: the lab's, from lab.json)
repo: str = ""  # clone this path or URL instead of the recorded remote
rebuild_env: str = "auto"  # auto (when the lock differs), always, or never
allow_missing: bool = False  # go on when untracked files were not captured
repeats: int = 1  # replay this many times and judge against the measured spread
browse_only: bool = False  # show the record and the diff only; replay nothing

# %%
from IPython.display import HTML, Markdown, display

from replab import parampaths, replay, trackingserver

# relative paths mean: relative to this notebook (the replay itself runs in its workspace)
workdir, repo, run = parampaths.absolute_paths(dict(workdir=workdir, repo=repo, run=run)).values()
# the lab's server (lab.json), never a stray mlflow.db; browsing a bundle needs none
tracking_uri = trackingserver.resolve(tracking_uri, workdir, required=not (
    browse_only and parampaths.is_path("run", run))) or ""
target = replay.notebook_target(workdir, run, experiment, tracking_uri)
source = replay.load(target.run, experiment=target.experiment, tracking_uri=target.uri)
display(Markdown(replay.record_markdown(source)))

# %%
display(Markdown(replay.diff_here_markdown(source)))

# %%
if not browse_only:
    result = replay.replay_run(source, tracking_uri=target.uri, repo=repo or None,
                               workdir=workdir, repeats=repeats,
                               rebuild_env={"auto": None, "always": True, "never": False}[
                                   rebuild_env], allow_missing=allow_missing, progress=print)
    display(HTML(result.report["report.html"].read_text()))
