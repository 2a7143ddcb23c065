"""`nestdsl generate RUN_DIR --prompt TEXT`: sample text from a trained run's latest checkpoint,
with temperature, top-k, top-p and a repetition penalty; the run's tokenizer (bytes or its BPE)
encodes the prompt and decodes the text, which ends at a character boundary."""

from __future__ import annotations

import argparse
import sys

from nestdsl.train.generate import generate_from_run

HELP = "sample text from a trained run, one token at a time, carrying the in-context state"
EXAMPLE = 'nestdsl generate runs/transformer --prompt "ROMEO:" --tokens 300 --temperature 0.8'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by nestdsl train")
    parser.add_argument(
        "--prompt", default="", metavar="TEXT", help="text to continue (default: empty)"
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=200,
        metavar="N",
        help="tokens to generate: bytes, or BPE tokens for a BPE run (default 200)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        metavar="T",
        help="sampling temperature; 0 = greedy, which tends to loop (default 0.8)",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sample among the K likeliest tokens"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="sample among the likeliest tokens holding probability P (nucleus sampling)",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="divide the logits of tokens already in the text by R, e.g. 1.2 (default 1: off)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)"
    )
    parser.add_argument(
        "--device", default="auto", metavar="D", help="auto, cpu, cuda or cuda:N (default auto)"
    )


def run(args: argparse.Namespace) -> int:
    text = generate_from_run(
        args.run_dir,
        args.prompt,
        tokens=args.tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        device=args.device,
    )
    # Bytes, so a terminal without UTF-8 does not turn a replacement character into a crash.
    out = getattr(sys.stdout, "buffer", None)
    if out is not None:
        sys.stdout.flush()
        out.write(text.encode("utf-8", errors="replace") + b"\n")
        out.flush()
    else:
        print(text)
    return 0
