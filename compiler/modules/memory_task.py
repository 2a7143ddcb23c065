"""Continuum-memory blocks (NL §7.1, eqs. 71-72): MLP memories that learn from the model's loss.

A task-loss memory keeps its weights constant inside a chunk of its level. The model
(`CompiledModel`) runs in windows; after each window it hands the gradient of the window's
next-token loss with respect to the weights the window used to `learn`, which sums those
gradients over the chunk (eq. 71 sums before the step) and, at the chunk boundary, applies
the memory's rule to the sum `G` ("the error component of an arbitrary optimizer", eq. 71):

    gd        X <- r X - lr G
    momentum  S <- m S - lr G;                X <- r X + S
    muon      S <- m S + G;                   X <- r X - lr NS(S)
    dgd       X <- r X - lr (X A + G)         A = sum_t a_t a_t^T over the chunk's tokens
    (dgd + momentum: S <- m S - lr (X A + G); X <- r X + S; proximal step: (X A + G) is
     multiplied by (I + lr A)^-1, the exact minimizer of the chunk's DGD objective)

`X` is the state (the weights for l2 retention, the logits for kl, `A` for lq; reads and
gradients use the visible weights, kernels/deep_memory/retention.py), `r` the retention factor
and `a_t` the layer's input for token t. With `init: {kind: learned, by: L}` on an in-context
level L (the nested CMS of eq. 72) the block's initial state `P` is itself a memory of L: it
takes the same rule on L's clock from the gradients summed over L's chunk, and the block
restarts from it at every boundary of L. docs/semantics.md §7 states all of this.
"""

from __future__ import annotations

import torch

from nestdsl.compiler.modules.memory_deep import WeightsMemory
from nestdsl.kernels.deep_memory import memory_forward, visible_weights
from nestdsl.kernels.newton_schulz import newton_schulz

_MOMENTUM = ("momentum", "muon", "dgd_momentum")


class TaskMemory(WeightsMemory):
    """A continuum-memory block on a level `every: C`: its weights change only at chunk
    boundaries, by its rule applied to the chunk's summed task-loss gradient (eq. 71)."""

    CARRIED = ("W", "S", "P", "PS")  # weights, momentum, and a nested block's initial state

    def __init__(self, plan):
        super().__init__(plan)
        o = self.lowered
        self.rule, self.proximal, self.ns = o.rule, o.dgd_step == "proximal", (o.ns_steps,
                                                                              o.ns_kind)  # fmt: skip
        self.retention, self.local = o.retention or "l2", o.retention_mode == "local"
        self.q_norm, self.kl_scale = o.q_norm, o.kl_scale
        # Nested CMS: the period of the in-context level that owns the initial state.
        self.nest_every = o.init_every

    # ---------------------------------------------------------------- gates, retention

    def _gate(self, role: str, like: torch.Tensor, default: float) -> torch.Tensor:
        """A constant or learned gate as `[B, H, 1, 1]` (tensors were rejected at build)."""
        g = self.gates.get(role, {}, like[:, :1, :, 0, 0], default)  # [B, 1, H]
        return g[:, 0, :, None, None].to(like.dtype)

    def _keep(self, like: torch.Tensor) -> torch.Tensor:
        """The retention factor r `[B, H, 1, 1]`: 1 - forget, or exp(log_decay)."""
        like = like.unsqueeze(1)  # [B, 1, H, out, in]
        if "log_decay" in self.gates.sources:
            return self._gate("log_decay", like, 0.0).exp()
        return 1.0 - self._gate("forget", like, 0.0)

    def visible(self, states):
        """The weights reads and gradients see: local l2 retention decays before the chunk
        (Gated DeltaNet's order), kl and lq normalize (Miras eqs. 24-27)."""
        if self.local:
            return [self._keep(x) * x for x in states]
        return [visible_weights(x, self.retention, self.q_norm, self.kl_scale) for x in states]

    # ---------------------------------------------------------------- running a span

    def _span(self, env, queries, stream, offset, T):
        like = queries[0][0] if queries else next(iter(env.values()))
        X = self._load(stream, "W")
        V = stream.task_weights.get(self.key)
        if X is None or V is None:
            # The first span of this window (or the first after a reset). A layer running in
            # sequential segments calls `_span` once per segment: all of them read this one
            # node, so the window's gradient counts every use of the weights in the window,
            # with the state carried into the window held fixed (as a split stream must); the
            # outer gradient still flows through the alias.
            if X is None:
                X = self._load(stream, "P") or self.initial_weights(like.shape[0], like)
                self._store(stream, "W", X)
            V = [v.view_as(v) if v.requires_grad else v.detach().requires_grad_()
                 for v in self.visible(X)]  # fmt: skip
            stream.task_weights[self.key] = V
        outs = []
        for q, _ in queries:
            y, cache = memory_forward(self.structure, V, q.transpose(1, 2))  # [B, H, T, d_out]
            if self.rule.startswith("dgd"):  # sum_t a_t a_t^T per layer: [B, H, in, in]
                aat = [a.mT @ a for a in cache.inputs]
                if self.stop_gradient or not stream.second_order:
                    aat = [x.detach() for x in aat]
                self._store(stream, "WA", _add(self._load(stream, "WA"), aat))  # this window
            outs.append(y.transpose(1, 2))
        return outs

    def reset(self, stream) -> None:
        """Forget the block's own state; a nested CMS's initial state `P` belongs to the slower
        level and is kept (it resets with the sequence)."""
        for key in [*stream.state, *stream.new_state]:
            if key.startswith(self.key + ".") and not key.startswith(self.key + ".P"):
                stream.new_state[key] = None

    # ---------------------------------------------------------------- learning

    def learn(self, grads: list[torch.Tensor], stream, end: int) -> None:
        """Add one window's gradient (w.r.t. its visible weights) to the chunk's sum; at this
        memory's chunk boundary apply the rule; at the nesting level's boundary step `P`."""
        acc = _add(self._load(stream, "G"), grads)
        window_A = self._load(stream, "WA")  # dgd: this window's sum of a a^T per layer
        self._clear(stream, "WA")
        A = self._load(stream, "A") if window_A is None else _add(self._load(stream, "A"), window_A)
        nested = self.nest_every is not None
        if nested:
            self._store(stream, "PG", _add(self._load(stream, "PG"), grads))
            if window_A is not None:
                self._store(stream, "PA", _add(self._load(stream, "PA"), window_A))
        if nested and end % self.nest_every == 0:
            X = stream.task_weights[self.key]
            P = self._load(stream, "P") or self.initial_weights(X[0].shape[0], X[0])
            P, PS = self.step(P, self._load(stream, "PS"), self._load(stream, "PG"),
                              self._load(stream, "PA"))  # fmt: skip
            self._store(stream, "P", P)
            self._store(stream, "PS", PS)
            self._clear(stream, "PG", "PA", "S")
            self._store(stream, "W", P)  # the block restarts from its new initial state
        elif end % self.plan.chunk == 0:
            W, S = self.step(self._load(stream, "W"), self._load(stream, "S"), acc, A)
            self._store(stream, "W", W)
            self._store(stream, "S", S)
        else:
            self._store(stream, "G", acc)
            self._store(stream, "A", A)
            return
        self._clear(stream, "G", "A")

    def step(self, X, S, G, A):
        """One step of the rule on states X (and momenta S) from the summed gradient G (and the
        summed input products A for dgd). Returns the new (X, S)."""
        lr = self._gate("lr", X[0].unsqueeze(1), 1.0)  # [B, H, 1, 1]
        m = self._gate("momentum", X[0].unsqueeze(1), 0.0)
        r = self._keep(X[0])
        if self.rule in _MOMENTUM and S is None:
            S = [torch.zeros_like(x) for x in X]
        new_X, new_S = [], []
        for i, (x, g) in enumerate(zip(X, G)):
            base = r * x  # the retained state (local retention: the visible weights)
            if self.rule.startswith("dgd"):
                d = (base if self.local else x) @ A[i] + g  # the drive X a a^T + G, summed
                if self.proximal:  # (X A + G)(I + lr A)^-1: A is symmetric
                    eye = torch.eye(A[i].shape[-1], dtype=x.dtype, device=x.device)
                    d = torch.linalg.solve(eye + lr * A[i], d.mT).mT
                g = d
            if self.rule == "muon":
                s = m * S[i] + g
                new_S.append(s)
                new_X.append(base - lr * newton_schulz(s, *self.ns))
            elif self.rule in _MOMENTUM:
                s = m * S[i] - lr * g
                new_S.append(s)
                new_X.append(base + s)
            else:
                new_X.append(base - lr * g)
        return new_X, (new_S or None)

    def _clear(self, stream, *names) -> None:
        for name in names:
            for i in range(len(self.initial)):
                stream.put(f"{self.key}.{name}.{i}", None)


def _add(acc, xs):
    return list(xs) if acc is None else [a + x for a, x in zip(acc, xs)]
