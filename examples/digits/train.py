"""Train the digits model as a script: python train.py --seed 0 --epochs 15"""

import argparse

from digits import train

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--experiment", default="digits")
    a = p.parse_args()
    print("run", train(a.seed, a.epochs, a.lr, a.experiment))
