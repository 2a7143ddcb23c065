"""Continuum-memory blocks (NL §7.1, eq. 71): MLP memories that learn from the model's own loss.

The model computes each task-loss window's gradient (`CompiledModel`) and hands it to `learn`.
"""

from __future__ import annotations

import torch
from nestdsl.compiler.modules.memory_deep import WeightsMemory

from nestdsl.errors import CompileError


class TaskMemory(WeightsMemory):
    """A continuum-memory block (NL §7.1, eq. 71): weights constant inside a chunk, changed at
    each chunk boundary by `-lr` times the summed task-loss gradient of the chunk's tokens.

    The model computes that gradient window by window (`CompiledModel`) and hands it to `learn`.
    """

    def __init__(self, plan):
        super().__init__(plan)
        if isinstance(self.gates.sources.get("lr"), str):
            raise CompileError(
                f"memory `{plan.decl}`: a task-loss memory takes a constant or learned `lr`, "
                "not a tensor (eq. 71 sums per-token gradients before the step)"
            )

    def _span(self, env, queries, stream, offset, T):
        like = queries[0][0] if queries else next(iter(env.values()))
        W = self._load(stream, "W") or self.initial_weights(like.shape[0], like)
        # A fresh node per window: the window's gradient then counts only this window's uses
        # of the weights, with the state carried into the window held fixed (as a split
        # stream must); the outer gradient still flows through the alias.
        W = [w.view_as(w) if w.requires_grad else w.detach().requires_grad_() for w in W]
        stream.task_weights[self.key] = W
        self._store(stream, "W", W)
        return [self.apply(W, q) for q, _ in queries]

    def learn(self, grads: list[torch.Tensor], stream, end: int) -> None:
        """Accumulate one window's gradient; apply the sum at this memory's chunk boundary."""
        W = stream.task_weights[self.key]
        acc = self._load(stream, "G")
        acc = grads if acc is None else [a + g for a, g in zip(acc, grads)]
        if end % self.plan.chunk:
            self._store(stream, "G", acc)
            return
        lr = self.gates.get("lr", {}, W[0].unsqueeze(1), 1.0)[:, 0]  # [B, H]
        lr = lr[..., None, None]
        self._store(stream, "W", [w - lr * a for w, a in zip(W, acc)])
        for i in range(len(W)):
            stream.put(f"{self.key}.G.{i}", None)
