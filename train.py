"""Trains a classifier with Jacobian regularization: the program is jacuap/programs/train.py.

Run it as ``python train.py --help`` from a checkout, or as ``jacuap-train
--help`` from any folder after ``pip install``.
"""

from jacuap.programs import train_main

if __name__ == "__main__":
    train_main()
