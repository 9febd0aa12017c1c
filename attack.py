"""Attacks a trained workdir with universal (and per-input) perturbations: the program is jacuap/programs/attack.py.

Run it as ``python attack.py --help`` from a checkout, or as ``jacuap-attack
--help`` from any folder after ``pip install``.
"""

from jacuap.programs import attack_main

if __name__ == "__main__":
    attack_main()
