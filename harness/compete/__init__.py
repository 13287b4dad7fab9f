"""Competing: one competition end to end (runner), its units and executors, the references,
the bundled baselines and `unlearn check-baselines`, and where the time goes (timing).

The only stage that imports all the others.
"""
