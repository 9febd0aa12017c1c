"""The attack catalog: attack.py's flags are checked against a snapshot of the registry, which must equal it."""

import os
import subprocess
import sys

from jacuap.evaluation import catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "jacuap", "evaluation", "catalog_snapshot.py")


def test_snapshot_is_the_registry_of_built_in_attacks():
    # A fresh process: the tests' own toy registrations must not enter the comparison.
    code = "from jacuap.evaluation import catalog; import sys; sys.stdout.write(catalog.snapshot_source())"
    live = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    with open(SNAPSHOT) as f:
        assert f.read() == live, "the attack registry changed: run `python -m jacuap.evaluation.catalog`"


def test_facts_follow_the_live_registry_once_it_is_loaded():
    from jacuap import attacks

    live = catalog.facts()
    assert list(live) == list(attacks.universal_names() + attacks.per_input_names())
    for name, spec in attacks.ATTACKS.items():
        assert live[name].norms == tuple(spec.norms) and live[name].settings == tuple(spec.settings)
        assert live[name].layers == spec.layers and live[name].universal == spec.universal
    assert catalog.label_losses() == tuple(attacks.LABEL_LOSSES) and catalog.priors() == tuple(attacks.PRIORS)
