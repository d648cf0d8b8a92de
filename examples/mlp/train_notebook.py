# %% [markdown]
# # MLP, as a notebook
# Set `unseeded = True` for a nondeterministic run.

# %% tags=["parameters"]
seed: int = 0  # random seed (ignored when unseeded)
epochs: int = 30  # passes over the training set
hidden: int = 16  # hidden units
unseeded: bool = False  # True: nondeterministic run
experiment: str = "mlp"  # MLflow experiment

# %%
from mlp import train

run_id = train(seed, epochs, hidden, unseeded, experiment)
print("run", run_id)
