"""The model being served.

Owns: the scorer, threshold and drift monitor that score the next batch, swapped together
(``served``), and watching a registry for a newly promoted model (``reload``).

May import: :mod:`worker.contract`, :mod:`worker.core`, :mod:`worker.observe`.
"""
