"""Example transforms and sinks used by the specs in include/specs/.

They live inside the ``rowfill`` package on purpose: the Airflow DAG processor and workers have
include/ installed as the package ``rowfill`` and nothing else, so ``rowfill.examples.loyalty``
is importable wherever a chunk runs. Your own transforms can live here too, or in any package
installed on every Airflow component (see the README, "Python transforms").
"""
