"""One layer: a block's ops run in dependency order, its memories learning and answering reads.

Execution order is the per-step data flow, plus one rule: all reads of a memory are answered
together, after the tensors it learns from (keys, values, gates) and all its queries exist.
"""

from __future__ import annotations

import networkx as nx
import torch
from torch import nn

from nestdsl.compiler.modules.memory_factory import build_memory
from nestdsl.compiler.modules.ops import (
    Aggregate,
    LayerNorm,
    Linear,
    RMSNorm,
    Rope,
    ShortConv,
    Stream,
    unary,
)
from nestdsl.compiler.passes.schedule_levels import write_sources
from nestdsl.spec import ops as spec_ops
from nestdsl.spec.ops import UNARY, Read, inputs_of


class Layer(nn.Module):
    def __init__(self, plan, layer):
        super().__init__()
        self.name = layer.name
        self.block = layer.block
        self.input = layer.block.input
        self.out = layer.block.out
        self.modules_ = nn.ModuleDict()
        self.in_ndim: dict[str, int] = {}
        for name, op in layer.block.nodes.items():
            module = self._module(plan, layer, name, op)
            if module is not None:
                self.modules_[name] = module
        self.memories = nn.ModuleDict(
            {decl: build_memory(m) for decl, m in layer.memories.items()}
        )
        self.order = self._order()

    def _module(self, plan, layer, name, op):
        key = f"{layer.name}.{name}"
        if isinstance(op, spec_ops.Linear):
            in_shape = plan.shape(layer, op.in_)
            self.in_ndim[name] = len(in_shape)
            return Linear(in_shape, plan.shape(layer, name), op.bias, op.then, key)
        if isinstance(op, spec_ops.Norm):
            dim = plan.shape(layer, name)[-1]
            return RMSNorm(dim) if op.op == "rmsnorm" else LayerNorm(dim)
        if isinstance(op, spec_ops.ShortConv):
            return ShortConv(plan.shape(layer, name), op.kernel, key)
        if isinstance(op, spec_ops.Rope):
            return Rope(plan.shape(layer, name)[-1], op.base)
        if isinstance(op, spec_ops.Aggregate):
            return Aggregate(len(op.in_), op.mode)
        if isinstance(op, (spec_ops.Persistent, spec_ops.WithPrefix, spec_ops.DropPrefix)):
            raise NotImplementedError(f"op `{op.op}` is not lowered yet")
        return None

    def _order(self) -> list[str]:
        nodes = self.block.nodes
        g = nx.DiGraph()
        g.add_nodes_from(nodes)
        for name, op in nodes.items():
            for src in inputs_of(op):
                if src in nodes:
                    g.add_edge(src, name)
        for decl in self.memories:
            reads = [n for n, op in nodes.items() if isinstance(op, Read) and op.memory == decl]
            needs = [*write_sources(self.memories[decl].plan.memory)]
            needs += [nodes[r].query for r in reads]
            for r in reads:
                g.add_edges_from((s, r) for s in needs if s in nodes and s != r)
        return list(nx.lexicographical_topological_sort(g, key=list(nodes).index))

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        env = {self.input: x}
        T = x.shape[1]
        nodes = self.block.nodes
        for name in self.order:
            if name in env:
                continue
            op = nodes[name]
            if isinstance(op, Read):
                self._read_all(op.memory, env, stream, T)
            else:
                env[name] = self._apply(name, op, env, stream)
        return env[self.out]

    def _read_all(self, decl: str, env: dict, stream: Stream, T: int) -> None:
        names = [n for n, op in self.block.nodes.items()
                 if isinstance(op, Read) and op.memory == decl]  # fmt: skip
        reads = [(env[self.block.nodes[n].query], self.block.nodes[n].order) for n in names]
        outs = self.memories[decl].run(env, reads, stream, T)
        env.update(zip(names, outs))

    def _apply(self, name: str, op, env: dict, stream: Stream) -> torch.Tensor:
        ins = [env[i] for i in inputs_of(op)]
        module = self.modules_[name] if name in self.modules_ else None
        if isinstance(op, spec_ops.Linear):
            return module(ins[0], self.in_ndim[name], stream)
        if isinstance(module, (ShortConv, Rope)):
            return module(ins[0], stream)
        if isinstance(op, spec_ops.Aggregate):
            return module(ins)
        if module is not None:
            return module(ins[0])
        if op.op in UNARY:
            return unary(op.op, ins[0])
        if isinstance(op, spec_ops.Mul):
            a, b = ins
            while a.dim() < b.dim():
                a = a.unsqueeze(-1)
            while b.dim() < a.dim():
                b = b.unsqueeze(-1)
            return a * b
        if isinstance(op, spec_ops.Add):
            return sum(ins[1:], ins[0])
        raise NotImplementedError(f"op `{op.op}` has no lowering (this is a bug in nestdsl)")
