"""Text generation from a trained run, one token at a time, carrying the in-context state.

A token is a byte, or a token of the run's BPE (nestdsl/data/tokenizer.py): the prompt is
encoded with the run's tokenizer and what the model writes is decoded with it.

The prompt is fed once; after that every new token is fed alone together with the state the
model returned for everything before it (`logits, state = model(token, state=state)`), so the
cost per token does not grow with the text and nothing is ever re-fed. By the model contract
(feeding a sequence in pieces while carrying the state equals feeding it whole) this samples
from the same distributions as re-feeding the whole text each time.

Sampling: a repetition penalty (CTRL, Keskar et al. 2019: a logit of a token already in the
text is divided by the penalty when positive, multiplied when negative), then temperature,
top-k and top-p (nucleus: the smallest set of likeliest tokens whose probability reaches p).
Temperature 0 is greedy decoding, which on small models soon repeats one phrase forever; a
penalty or sampling avoids that. Tokens are not characters: the text stops at a character
boundary (up to three more tokens finish a started UTF-8 sequence), so no U+FFFD appears at
its end.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from nestdsl.data.tokenizer import ByteTokenizer, Tokenizer
from nestdsl.errors import UserError
from nestdsl.train.distributed import resolve_device

# An empty prompt still needs one byte of context to predict from; a newline is a neutral start.
EMPTY_PROMPT = b"\n"


def pick_next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator,
    top_p: float | None = None,
    penalty: float = 1.0,
    seen: torch.Tensor | None = None,
) -> int:
    """Sample a token from one row of logits; temperature 0 (or top_k 1) picks the most likely.

    `seen` marks the tokens already in the text (`[V]` bool) for the repetition `penalty`.
    """
    logits = logits.float().cpu()  # [V]
    if penalty != 1.0 and seen is not None:
        logits = torch.where(seen & (logits > 0), logits / penalty, logits)
        logits = torch.where(seen & (logits <= 0), logits * penalty, logits)
    if temperature <= 0 or top_k == 1:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)  # [V]
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probabilities, descending=True)
        before = torch.cumsum(sorted_p, dim=0) - sorted_p  # mass of the likelier tokens
        drop = order[before >= top_p]  # the likeliest token always stays (before = 0)
        probabilities = probabilities.index_fill(0, drop, 0.0)
    return int(torch.multinomial(probabilities, 1, generator=generator))


pick_next_byte = pick_next_token  # the name from byte-only days


def incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of `data` start a UTF-8 sequence that is not finished yet."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: the lead is further back
            continue
        need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else (
            4 if byte >> 3 == 0b11110 else 1)  # fmt: skip
        return back if back < need else 0
    return 0


def _check_sampling(max_new_bytes, top_k, top_p, penalty) -> None:
    if max_new_bytes < 0:
        raise UserError(f"--tokens must be non-negative, got {max_new_bytes}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if penalty <= 0:
        raise UserError(f"--repetition-penalty must be positive, got {penalty}")


def generate_bytes(model: torch.nn.Module, prompt: bytes, max_new_bytes: int, **sampling) -> bytes:
    """The `max_new_bytes` bytes a byte-level model writes after `prompt` (see generate_text)."""
    return generate_text(model, prompt, max_new_bytes, ByteTokenizer(), **sampling)


@torch.no_grad()
def generate_text(
    model: torch.nn.Module,
    prompt: bytes,
    max_new_tokens: int,
    tokenizer: Tokenizer,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    whole_characters: bool = False,
) -> bytes:
    """The text of the `max_new_tokens` tokens the model writes after `prompt` (the prompt
    itself excluded), as bytes: the prompt is encoded and the tokens decoded by `tokenizer`.

    With `whole_characters`, up to three more tokens finish a UTF-8 sequence the last ones
    started, and a sequence still unfinished then is dropped: the text ends at a character.
    """
    _check_sampling(max_new_tokens, top_k, top_p, repetition_penalty)
    device = torch.device(device)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )
    prompt_ids = tokenizer.encode(prompt or EMPTY_PROMPT).tolist()
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # [1, T]
    seen = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)  # [V]
    seen[prompt_ids] = True
    written: list[int] = []
    if max_new_tokens == 0:
        return b""
    with autocast():
        logits, state = model(tokens, state=None)
    while True:
        token = pick_next_token(
            logits[0, -1],
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            penalty=repetition_penalty,
            seen=seen,
            generator=generator,
        )
        written.append(token)
        seen[token] = True
        if len(written) >= max_new_tokens:
            text = tokenizer.decode(written)
            tail = incomplete_tail(text) if whole_characters else 0
            if not tail:
                return text
            if len(written) - max_new_tokens >= 3:  # no UTF-8 sequence is longer: give it up
                return text[:-tail]
        with autocast():
            logits, state = model(
                torch.tensor([[token]], dtype=torch.long, device=device), state=state
            )


def load_run_model(run_dir: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model of a run folder with its latest checkpoint's weights (see nestdsl.load_run)."""
    from nestdsl.train.run import load_run

    return load_run(run_dir, device).model


def generate_from_run(
    run_dir: str | Path,
    prompt: str,
    *,
    tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    device: str = "auto",
) -> str:
    """The prompt followed by about `tokens` generated tokens of the run's tokenizer, ending at
    a character boundary, decoded as UTF-8 (a byte the model got wrong inside the text becomes
    U+FFFD)."""
    from nestdsl.train.run import load_run

    _check_sampling(tokens, top_k, top_p, repetition_penalty)
    torch_device = resolve_device(device)
    run = load_run(run_dir, torch_device)
    prompt_bytes = prompt.encode("utf-8")
    new = generate_text(
        run.model,
        prompt_bytes,
        tokens,
        run.tokenizer,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        device=torch_device,
        whole_characters=True,
    )
    return (prompt_bytes + new).decode("utf-8", errors="replace")
