"""The two programs, as importable modules: :mod:`.train` (``jacuap-train``) and
:mod:`.attack` (``jacuap-attack``); ``train.py`` and ``attack.py`` at the
repository root run the same code.  Importing one defines its absl flags.
"""
