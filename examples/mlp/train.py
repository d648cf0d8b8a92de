"""Train the MLP as a script: python train.py [--unseeded] [--seed 0] [--epochs 30]"""

import argparse

from mlp import train

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--unseeded", action="store_true", help="nondeterministic: no seed")
    p.add_argument("--experiment", default="mlp")
    a = p.parse_args()
    print("run", train(a.seed, a.epochs, a.hidden, a.unseeded, a.experiment))
