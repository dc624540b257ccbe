"""What a sweep is, the same for every backend: its space, objective and spec
(``space``, ``spec``), how a trial receives its values (``params``) and reports its metric
(``lines``), and how a sweep is shown (``table``). Running one: ``nbscale.sweep_runs``."""
