"""`nestdsl explore BASE_SPEC... --budget B --out DIR`: search the space of nestings around
shipped or hand-written specs, train and score every candidate, rank them (nestdsl/explore/).

The search lives in DIR: search.json (state), candidates/*.yaml (each with a comment naming
its parent and mutations), runs/<id>/ (each candidate's run folder), leaderboard.md/.json,
pareto.png and graphs.md (level graphs of the top candidates beside their base). Stop it at
any time (Ctrl-C) and continue with the same command plus --resume.
"""

from __future__ import annotations

import sys

from nestdsl.explore.search import OBJECTIVES, STRATEGIES, Search, Settings

HELP = "search nestings around base specs: mutate, validate, train briefly, score, rank"
EXAMPLE = "nestdsl explore titans-lmm --budget 15m --strategy evolution --seed 0 --out explore/titans"


def add_arguments(parser) -> None:
    parser.add_argument("bases", metavar="BASE_SPEC", nargs="+", help="shipped spec names or YAML paths")
    parser.add_argument("--budget", required=True, metavar="TOKENS_OR_TIME",
                        help="training tokens (`500k`, `2M`) or time (`900s`, `15m`, `1h`); a "
                        "token budget makes the whole search reproducible")  # fmt: skip
    parser.add_argument("--strategy", choices=STRATEGIES, default="evolution",
                        help="random mutants of the bases, evolution (mutate the best so far) or "
                        "successive halving (default: evolution)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="proposals and training (default 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the search folder")
    parser.add_argument("--resume", action="store_true", help="continue the search in --out")
    parser.add_argument("--objective", choices=OBJECTIVES, default="bpb",
                        help="bits per byte on held-out text (default) or MQAR recall")  # fmt: skip
    parser.add_argument("--steps", type=int, default=60,
                        help="training steps per candidate (halving: of the first rung; default 60)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument("--seq-len", type=int, default=128, help="default 128")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="parameter count within this fraction of the base's (default 0.1)")  # fmt: skip
    parser.add_argument("--max-candidate-time", dest="max_candidate_s", type=float, metavar="SECONDS",
                        help="stop and fail a candidate that trains longer (default: with a time "
                        "budget 5x the base's training time, with a token budget none)")  # fmt: skip
    parser.add_argument("--data", metavar="FILE", help="corpus (default: the embedded Shakespeare)")
    parser.add_argument("--no-pictures", dest="pictures", action="store_false",
                        help="skip pareto.png and the level graphs")  # fmt: skip


def run(args) -> int:
    settings = Settings(
        bases=list(args.bases), budget=args.budget, strategy=args.strategy, seed=args.seed,
        objective=args.objective, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, tolerance=args.tolerance, data=args.data,
        max_candidate_s=args.max_candidate_s,
    )  # fmt: skip
    settings.check()
    search = Search(args.out, settings, resume=args.resume, say=lambda m: print(m, file=sys.stderr))
    try:
        state = search.run()
    except KeyboardInterrupt:
        print(f"nestdsl explore: stopped; {len(search.state.candidates)} candidates kept in "
              f"{args.out}; continue with the same command and --resume", file=sys.stderr)  # fmt: skip
        return 130
    if args.pictures:
        from nestdsl.explore.pictures import draw_graphs, draw_pareto

        draw_pareto(search.out, state)
        draw_graphs(search.out, state)
    print((search.out / "leaderboard.md").read_text())
    return 0
