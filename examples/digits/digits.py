"""Handwritten digits with a linear model trained epoch by epoch: fully deterministic.

The data ships inside scikit-learn (``load_digits``), so nothing is downloaded. Given the
same seed, two runs log bit-identical curves.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split

import replab.tracking


def train(seed: int = 0, epochs: int = 15, lr: float = 0.01, experiment: str = "digits",
          tracking_uri: str | None = None) -> str:
    """Train and track one run; returns its MLflow run id."""
    params = {"seed": seed, "epochs": epochs, "lr": lr, "model": "SGDClassifier(log_loss)"}
    with replab.tracking.start_run(experiment=experiment, params=params, seed=seed,
                                   inputs=["sklearn:load_digits"],
                                   tracking_uri=tracking_uri) as run:
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.25, random_state=seed)
        rng = np.random.default_rng(seed)
        clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=lr,
                            random_state=seed)
        classes = np.unique(y)
        for epoch in range(epochs):
            order = rng.permutation(len(Xtr))
            clf.partial_fit(Xtr[order], ytr[order], classes=classes)
            run.log_metrics({
                "train_loss": log_loss(ytr, clf.predict_proba(Xtr), labels=classes),
                "val_accuracy": accuracy_score(yva, clf.predict(Xva)),
            }, step=epoch)
        return run.run_id
