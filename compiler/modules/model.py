"""The compiled model: embedding, layers, head; `model(tokens, state) -> (logits, state)`.

The state is a flat `dict[str, Tensor]` holding every in-context memory (and the short
convolutions' last inputs) plus `pos`, the number of tokens seen; feeding a sequence in pieces
and carrying the state gives the same logits as feeding it whole.

Memories that learn from the task loss (CMS, NL eq. 71) need that loss while the sequence
runs: the model then runs in windows of `task_window` tokens, and once the token after a
window has arrived (the target of the window's last position) takes the gradient of the
window's next-token loss by the weights those memories used in the window. A call that ends
before that token keeps the window's tokens and the state at its start, and the next call
replays them, so streaming stays exact.

Training recomputes in backward only sequences of at least AUTO_RECOMPUTE_FROM tokens
(`auto`): there the deep memories rerun their chunks in groups (Muon's at any length), and a
model with sequential segments (Titans MAC) trains in recomputed spans: that exactness lets
each span be a checkpoint of the state it starts from, so backward keeps the states between
spans and one span's intermediates, not every segment's. `model.recompute = "spans"` trains
any model so at any length (less memory for one more forward pass), `"256"` in spans of 256
tokens, `"off"` recomputes nothing (the fastest step, the most memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nestdsl.compiler.modules.layer import Layer
from nestdsl.compiler.modules.memory_deep import WeightsMemory
from nestdsl.compiler.modules.memory_task import TaskMemory
from nestdsl.compiler.modules.ops import LayerNorm, RMSNorm, Stream
from nestdsl.compiler.plan import AUTO_RECOMPUTE_FROM, check_recompute

REPLAY = "replay."


class CompiledModel(nn.Module):
    def __init__(self, plan):
        super().__init__()
        self.spec_name = plan.spec.name
        self.vocab, self.d_model = plan.vocab, plan.d_model
        self.task_window = plan.task_window
        self.recompute_unit = plan.recompute_unit
        self.span_unit = plan.span_unit
        self._recompute = "auto"
        self._chunk_recompute = "all"  # which deep memories rerun chunks (`recompute_chunks`)
        self.embed = nn.Embedding(plan.vocab, plan.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(Layer(plan, layer) for layer in plan.layers)
        head = plan.spec.head
        norms = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}
        self.norm = norms[head.norm](plan.d_model) if head.norm in norms else nn.Identity()
        self.tied = head.tied
        if not self.tied:
            self.head = nn.Linear(plan.d_model, plan.vocab, bias=False)
            nn.init.normal_(self.head.weight, std=0.02)
        self.task_memories = {m.key: m for m in self.modules() if isinstance(m, TaskMemory)}
        self._levels = _owning_levels(self, plan)
        # Tokens per state that backward keeps: the memories' chunks weighted by state size.
        sized = [(m.state_size(), m.plan.chunk) for layer in self.layers
                 for m in layer.memories.values() if m.state_size()]  # fmt: skip
        self._state_every = sum(s for s, _ in sized) / sum(s / c for s, c in sized) if sized else None

    def undecayed_parameters(self) -> set[str]:
        """Parameters the outer optimizer's weight decay must leave alone: the learned initial
        states of memories with an output norm. The norm makes the loss (nearly) blind to their
        scale, so decay shrinks them unopposed, and an inner step of fixed size is relatively
        larger the smaller they are: decayed as 30,000 AdamW updates at weight decay 0.1 would,
        titans-lmm's outer gradient went from 12 to 9e16 (docs/training.md, "Weight decay")."""
        return {f"{path}.{name}" for path, module in self.named_modules()
                if isinstance(module, WeightsMemory) and module.structure.norm != "none"
                for name, _ in module.named_parameters() if name.startswith("initial.")}  # fmt: skip

    @property
    def continual(self) -> bool:
        """Whether some memory keeps its state across sequences (`reset: never`)."""
        return any(memory.plan.memory.reset.kind == "never"
                   for layer in self.layers for memory in layer.memories.values())  # fmt: skip

    def carried_over(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the next sequence starts from, given this sequence's final state: the state
        proper of every memory with `reset: never` (continual learning across sequences).
        Everything else (positions, convolution inputs, partial chunks) starts afresh."""
        kept = {}
        for layer in self.layers:
            for memory in layer.memories.values():
                if memory.plan.memory.reset.kind == "never":
                    kept.update(memory.carried(state))
        return kept

    def parameter_levels(self) -> dict[str, str]:
        """Parameter name -> the level whose optimizer trains it (the spec's `every: step` or
        `every: never` levels). A learned initial state belongs to its `init.by` level when that
        level is `step` or `never`; when it is an in-context level (a nested CMS, NL eq. 72)
        that level updates the state in context and the outermost level trains its value at
        the start of each sequence."""
        return dict(self._levels)

    def forward(self, tokens: torch.Tensor, state: dict[str, torch.Tensor] | None = None):
        """tokens `[B, T]` int64 -> logits `[B, T, vocab]` and the state after the last token."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        state = dict(state or {})
        which = self._chunk_recompute_for(tokens.shape[1])
        if which != self._chunk_recompute:
            for layer in self.layers:
                layer.recompute_chunks(which)
            self._chunk_recompute = which
        span = self._recomputed_span(tokens.shape[1])
        if span:
            return self._recomputed(tokens, state, span)
        return self._plain(tokens, state)

    @property
    def recompute(self) -> str:
        """Which models train in recomputed spans: `auto` (those with sequential segments and
        no task-loss windows, on sequences of at least AUTO_RECOMPUTE_FROM tokens), `spans` (any
        model, spans of the rule below), a number of tokens per span (any model; a multiple of
        `span_unit`) or `off`."""
        return self._recompute

    @recompute.setter
    def recompute(self, mode: str) -> None:
        mode = check_recompute(str(mode))
        if mode.isdigit() and int(mode) % self.span_unit:
            raise ValueError(
                f"spans of {mode} tokens: a span must be a multiple of {self.span_unit} tokens "
                f"(the lcm of `{self.spec_name}`'s segments and chunks, so none ends inside one)")
        self._recompute = mode

    @property
    def reenters_backward(self) -> bool:
        """Whether training may run reentrant checkpoints (the spans of a model in task-loss
        windows, `_recomputed`): each span's backward then marks the parameters it used once
        more, which DistributedDataParallel accepts only with `static_graph`."""
        return bool(self.task_window and self._span_unit())

    def _span_unit(self) -> int | None:
        """What spans are a multiple of under the current mode, or None: no spans."""
        if self.recompute.isdigit():
            return self.span_unit
        return {"auto": self.recompute_unit, "spans": self.span_unit, "off": None}[self.recompute]

    def _recomputes(self, T: int) -> bool:
        """Whether training on T tokens recomputes anything in backward (spans, the deep
        memories' chunk groups): not under `off`, and under `auto` only from AUTO_RECOMPUTE_FROM
        tokens on (what recomputation saves grows with T, what it costs does not)."""
        short = self.recompute == "auto" and T < AUTO_RECOMPUTE_FROM
        return self.recompute != "off" and not short

    def _chunk_recompute_for(self, T: int) -> str:
        """Which deep memories rerun their chunks in backward on T tokens (DeepMemory.
        recompute_chunks): none under `off`, all when the model recomputes, and below that
        only those whose kept chunks cost far more than rerunning them (Muon)."""
        if self.recompute == "off":
            return "none"
        return "all" if self._recomputes(T) else "costly"

    def _recomputed_span(self, T: int) -> int | None:
        """Tokens per recomputed span when training on T tokens, or None: a number of tokens
        given as the mode, else about sqrt(T C) tokens (a multiple of the unit), C the tokens
        per state kept inside a span (`_state_every`; the unit for a model without one). A
        boundary keeps one state and a span about one per C tokens, so both grow as sqrt(T).
        Hope (C = 19.2, unit 64) peaks at 4.1 GB at B = 4, T = 2,048, d_model 256 in spans of
        192 tokens, where sqrt(T / unit) units (384 tokens) took 6.0 (docs/benchmarks.md)."""
        unit = self._span_unit()
        if not unit or not torch.is_grad_enabled() or not self._recomputes(T):
            return None
        if self.recompute.isdigit():
            span = int(self.recompute)
        else:
            span = unit * max(1, round(math.sqrt(T * (self._state_every or unit)) / unit))
        return span if T > span else None

    def _recomputed(self, tokens, state, span: int):
        """Training in spans, each a checkpoint: forward keeps only the state between spans,
        backward reruns a span to rebuild its intermediates. A span continues the sequence
        from the state as a streamed call does, so the logits and gradients are exactly those
        of one pass (tests/compiler/test_recompute.py).

        A model in task-loss windows differentiates each window's loss inside the span. The
        default checkpoint would answer that by rerunning the span so far at every window, so
        its spans are reentrant checkpoints: forward runs without a graph (each window still
        takes its first-order gradient), backward reruns the span with its second-order graph.
        `anchor` gives such a span an input that needs a gradient, so backward reaches it
        even when no state entry does (the first span's state is empty). A span is also
        handed the token after it, so a window that ends with the span learns there and the
        next span need not replay it."""
        pos = int(state.get("pos", torch.tensor(0)).item())
        outs, start, T = [], 0, tokens.shape[1]
        reentrant = bool(self.task_window)
        anchor = torch.ones((), device=tokens.device, requires_grad=True)
        while start < T:
            end = min(T, start + span - (pos + start) % span)
            keys, out_keys = sorted(state), []

            def run(_anchor, piece, after, *values, keys=keys, out_keys=out_keys):
                logits, new = self._plain(piece, dict(zip(keys, values, strict=True)), after)
                out_keys[:] = sorted(new)  # the same keys when backward reruns the span
                return (logits, *[new[k] for k in out_keys])

            after = tokens[:, end : end + 1] if end < T else None
            out = checkpoint(run, anchor, tokens[:, start:end], after, *[state[k] for k in keys],
                             use_reentrant=reentrant)  # fmt: skip
            outs.append(out[0])
            state = dict(zip(out_keys, out[1:], strict=True))
            start = end
        return torch.cat(outs, dim=1), state

    def _plain(self, tokens, state, after=None):
        """One pass over `tokens`; `after` (`[B, 1]` or None) is the token that follows them,
        the target a task-loss window ending with them learns from."""
        state = dict(state)
        pos = int(state.pop("pos", torch.tensor(0)).item())
        if not self.task_window:
            logits, state, _ = self._span(tokens, state, pos)
            state["pos"] = torch.tensor(pos + tokens.shape[1])
            return logits, state
        return self._windows(tokens, state, pos, after)

    def _span(self, tokens, state, pos, second_order: bool = False):
        stream = Stream(pos, state, second_order=second_order)
        x = self.embed(tokens)  # [B, T, D]
        for layer in self.layers:
            x = layer(x, stream)
        x = self.norm(x)
        logits = x @ self.embed.weight.T if self.tied else self.head(x)  # [B, T, V]
        return logits, _merged(state, stream), stream

    def _windows(self, tokens, state, pos, after=None):
        W = self.task_window
        grad_mode = torch.is_grad_enabled()
        replayed = state.pop(REPLAY + "tokens", None)
        if replayed is not None:  # the last call ended inside a window: redo it from its start
            snapshot = {k[len(REPLAY):]: v for k, v in state.items() if k.startswith(REPLAY)}
            state, tokens = snapshot, torch.cat([replayed, tokens], dim=1)
            pos -= replayed.shape[1]
            skip = replayed.shape[1]
        else:
            state = {k: v for k, v in state.items() if not k.startswith(REPLAY)}
            skip = 0
        outs = []
        start = 0
        T = tokens.shape[1]
        known = tokens if after is None else torch.cat([tokens, after], dim=1)  # the targets
        second_order = grad_mode and any(not m.stop_gradient for m in self.task_memories.values())
        with torch.enable_grad():
            while start < T:
                end = min(T, start + W - (pos + start) % W)
                piece = tokens[:, start:end]
                before = state
                logits, state, stream = self._span(piece, state, pos + start, second_order)
                # A window learns once the target of its last position (the next token) is
                # here: the update feeds positions from that token on, so it stays causal.
                if (pos + end) % W == 0 and end < known.shape[1]:
                    targets = known[:, start + 1 : end + 1]  # [B, W]
                    self._learn(logits, targets, stream, pos + end, grad_mode)
                    state = _merged(state, stream)
                else:
                    state = {**state, **{REPLAY + k: v for k, v in before.items()},
                             REPLAY + "tokens": piece}  # fmt: skip
                outs.append(logits)
                start = end
        logits = torch.cat(outs, dim=1)[:, skip:]
        state["pos"] = torch.tensor(pos + T)
        if not grad_mode:
            logits = logits.detach()
            state = {k: v.detach() for k, v in state.items()}
        return logits, state

    def _learn(self, logits, targets, stream, end: int, grad_mode: bool) -> None:
        """The window's task-loss gradient, handed to each task memory (NL eq. 71): the summed
        next-token loss of all the window's positions, by the weights the window read."""
        used = [(key, w) for key, ws in stream.task_weights.items() for w in ws]
        scores = logits.flatten(0, 1)  # [B * W, V]
        if scores.dtype in (torch.float16, torch.bfloat16):  # the loss in at least fp32
            scores = scores.float()
        loss = F.cross_entropy(scores, targets.flatten(), reduction="sum")
        grads = torch.autograd.grad(loss, [w for _, w in used], create_graph=stream.second_order,
                                    retain_graph=True, allow_unused=True)  # fmt: skip
        for key, ws in stream.task_weights.items():
            memory = self.task_memories[key]
            mine = [g for (k, _), g in zip(used, grads) if k == key]
            mine = [torch.zeros_like(w) if g is None else g for g, w in zip(mine, ws)]
            if memory.stop_gradient or not grad_mode:
                mine = [g.detach() for g in mine]
            memory.learn(mine, stream, end)


def _owning_levels(model: nn.Module, plan) -> dict[str, str]:
    spec = plan.spec
    outer = plan.checked.outer_level()
    owner_of = {}
    for index, layer in enumerate(plan.layers):
        owner_of[f"layers.{index}."] = layer.block.level or outer
        for decl, m in layer.memories.items():
            init_by = getattr(m.memory.init, "by", None)
            if init_by is not None and isinstance(spec.levels[init_by].every, int):
                init_by = outer  # nested CMS: the start of the in-context state, per sequence
            level = init_by or (m.level if not isinstance(m.every, int) else outer)
            owner_of[f"layers.{index}.memories.{decl}."] = level
    levels = {}
    for name, _ in model.named_parameters():
        prefixes = [p for p in owner_of if name.startswith(p)]
        levels[name] = owner_of[max(prefixes, key=len)] if prefixes else outer
    assert all(lv in spec.levels for lv in levels.values())
    return levels


def _merged(state: dict, stream: Stream) -> dict:
    """The carried state updated by what the stream wrote (None marks a reset entry)."""
    merged = {**state, **stream.new_state}
    return {k: v for k, v in merged.items() if v is not None}
