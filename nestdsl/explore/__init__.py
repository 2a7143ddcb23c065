"""`nestdsl explore`: search the space of nestings around base specs (issue 11).

    from nestdsl.explore.search import Search, Settings
    state = Search("explore/titans", Settings(bases=["titans-lmm"], budget="2M")).run()

mutations.py (with mutations_levels.py and mutations_memory.py) holds the operators, each a step
along one Nested Learning axis; candidates.py checks a mutant with the full validate path and
fingerprints its plan; search.py and halving.py run the strategies; evaluate.py trains and
scores a candidate; leaderboard.py and pictures.py write what a user reads (docs/explore.md).
"""
