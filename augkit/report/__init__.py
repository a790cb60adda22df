"""Reports to share: one self-contained HTML page about a run and its evaluation (``augkit report``). Above training and infer: it reads what both write."""
