# %% [markdown]
# # Digits, as a notebook
# The same training as `train.py`; the run records this notebook (not ipykernel) as its
# entrypoint, with the parameters papermill gave it.

# %% tags=["parameters"]
seed: int = 0  # random seed
epochs: int = 15  # passes over the training set
lr: float = 0.01  # learning rate
experiment: str = "digits"  # MLflow experiment

# %%
from digits import train

run_id = train(seed, epochs, lr, experiment)
print("run", run_id)
