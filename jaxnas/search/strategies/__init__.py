"""The search strategies behind `--strategy` (modes/search.py maps each to its module).

gradient_search (scnas, gdas, darts: the bi-level steps of search/bilevel.py),
random_search, ronasmis_search (search/controller.py) and c2fnas_search; `common` holds
what they share (held-out scoring, the outputs every strategy writes).
"""
