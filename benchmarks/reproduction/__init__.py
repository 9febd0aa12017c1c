"""The reproduction of Co, Martinez-Rego and Lupu (ICANN 2021): ``benchmarks/reproduce.py``'s parts.

* :mod:`.records` - one trained and evaluated model as a JSON record (the unit of the sweep);
* :mod:`.plan` - which models the sweep trains, in what order, and how strengths are chosen;
* :mod:`.evaluate` - trains one model and measures everything its record holds;
* :mod:`.stats` - bootstrap intervals over seeds and test inputs, correlations, verdicts;
* :mod:`.bound` - the paper's Jacobian bound beside what a model's UAPs do; :mod:`.bound_records` adds it to
  records (``test.bound``), :mod:`.bound_claim` makes it a row of the claims;
* :mod:`.report` - the claims, tables and plots from a set of records;
* :mod:`.model_store` - finished models' parameters and suite UAPs committed beside their records, and
  workdirs restored from them.
"""
