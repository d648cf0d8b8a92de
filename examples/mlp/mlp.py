"""A small neural network on the breast-cancer set; ``unseeded=True`` makes it
nondeterministic (weights initialised and batches shuffled from fresh entropy).

The data ships inside scikit-learn (``load_breast_cancer``).
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

import replab.tracking


def train(seed: int = 0, epochs: int = 30, hidden: int = 16, unseeded: bool = False,
          experiment: str = "mlp", tracking_uri: str | None = None) -> str:
    """Train and track one run; returns its MLflow run id."""
    params = {"seed": None if unseeded else seed, "epochs": epochs, "hidden": hidden,
              "unseeded": unseeded}
    with replab.tracking.start_run(experiment=experiment, params=params,
                                   seed=None if unseeded else seed,
                                   inputs=["sklearn:load_breast_cancer"],
                                   tracking_uri=tracking_uri) as run:
        X, y = load_breast_cancer(return_X_y=True)
        Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.3, random_state=0)
        scaler = StandardScaler().fit(Xtr)
        Xtr, Xva = scaler.transform(Xtr), scaler.transform(Xva)
        state = None if unseeded else seed
        rng = np.random.default_rng(state)
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), learning_rate_init=0.01,
                            random_state=state)
        for epoch in range(epochs):
            for batch in np.array_split(rng.permutation(len(Xtr)), 8):
                clf.partial_fit(Xtr[batch], ytr[batch], classes=[0, 1])
            run.log_metrics({
                "train_loss": log_loss(ytr, clf.predict_proba(Xtr)),
                "val_accuracy": accuracy_score(yva, clf.predict(Xva)),
            }, step=epoch)
        return run.run_id
