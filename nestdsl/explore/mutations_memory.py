"""Mutation operators on one memory: Miras's four design choices (structure, attentional bias,
retention, learning rule; Miras §3, NL Definition 1) and Hope's adaptive projections (NL §8.1).

Same contract as mutations_levels.py: `op(doc, rng) -> str` edits the spec document in place,
or raises `NotApplicable`; the full validate path judges the result.
"""

from __future__ import annotations

import random

from nestdsl.explore.spec_doc import (
    NotApplicable,
    blocks,
    choose,
    every,
    fresh,
    in_context_levels,
    is_cms,
    kind_of,
    level_with_period,
    memories,
)

RULES = ("gd", "momentum", "dgd", "muon")
OBJECTIVES = {  # the attentional biases a swap picks from (Miras §5.2)
    "l2": {"kind": "l2"},
    "dot": {"kind": "dot"},
    "lp": {"kind": "lp", "p": 3.0},  # Moneta's p
    "huber": {"kind": "huber", "delta": 1.0},
}
ADAPTIVE_PERIOD = 16  # Hope's projection-memory chunk (specs/hope.yaml `proj`)


def _learning(doc: dict, kinds=None) -> list[str]:
    """Memories learned in context by an inner rule (not caches, not CMS blocks)."""
    found = []
    for name, m in memories(doc).items():
        if not isinstance(m, dict) or is_cms(m) or kind_of(m.get("objective")) in ("softmax", "task"):
            continue
        if kinds is None or kind_of(m.get("structure")) in kinds:
            found.append(name)
    return found


def swap_structure(doc: dict, rng: random.Random) -> str:
    """Swap a memory's structure: a matrix, an MLP of depth d, or a gated MLP (Miras §3 choice
    1; NL §5: a deeper memory compresses more of its context; Atlas++ eq. 43 for the gated MLP).
    Sizes carry over: an MLP maps `dim -> dim`, so a matrix needs key size = value size."""
    name = choose(rng, _learning(doc, ("matrix", "mlp", "gated_mlp")), "matrix or MLP memory")
    old = memories(doc)[name]["structure"]
    heads = old.get("heads", 1)
    if old["kind"] == "matrix":
        if old.get("key_dim") != old.get("value_dim"):
            raise NotApplicable(f"`{name}` maps {old.get('key_dim')} -> {old.get('value_dim')}")
        dim = old["key_dim"]
    else:
        dim = old["dim"]
    options = [{"kind": "matrix", "heads": heads, "key_dim": dim, "value_dim": dim}]
    options += [{"kind": "mlp", "heads": heads, "dim": dim, "depth": d, "expansion": 2, "residual": True}
                for d in (1, 2, 3)]  # fmt: skip
    options.append({"kind": "gated_mlp", "heads": heads, "dim": dim, "expansion": 2})
    if old["kind"] == "mlp":
        options = [o for o in options if not (o["kind"] == "mlp" and o["depth"] == old.get("depth", 2))]
    else:
        options = [o for o in options if o["kind"] != old["kind"]]
    new = choose(rng, options, "other structure")
    memories(doc)[name]["structure"] = new
    if new["kind"] != "matrix" and kind_of(memories(doc)[name].get("init"), "zeros") != "learned":
        memories(doc)[name]["init"] = {"kind": "learned"}  # a deep memory at zero never learns
    depth = f" depth {new['depth']}" if new["kind"] == "mlp" else ""
    return f"swap_structure: `{name}` {old['kind']} -> {new['kind']}{depth}"


def swap_objective(doc: dict, rng: random.Random) -> str:
    """Swap a memory's objective (its attentional bias, Miras §3 choice 2 and §5.2): l2 (the
    delta rule), dot (Hebbian, linear attention, NL eqs. 14-18), lp with p = 3 (Moneta) or
    Huber (Yaad). KL, listed beside them in the issue, is a retention in nestdsl (Memora,
    Miras eq. 27): `swap_retention` reaches it."""
    name = choose(rng, _learning(doc), "memory with an inner objective")
    old = kind_of(memories(doc)[name].get("objective"))
    new = choose(rng, [k for k in OBJECTIVES if k != old], "other objective")
    memories(doc)[name]["objective"] = dict(OBJECTIVES[new])
    return f"swap_objective: `{name}` {old} -> {new}"


def swap_rule(doc: dict, rng: random.Random) -> str:
    """Swap a memory's learning rule (Miras §3 choice 4; NL §4 optimizers as memories): one
    gradient step (gd), momentum (Titans eq. 10, a 2-level memory of gradients), delta gradient
    descent (NL eq. 57, its proximal step) or Muon (Atlas eq. 32). The step size carries over;
    a momentum decay the old rule lacks starts at 0.9."""
    name = choose(rng, _learning(doc), "memory with an inner rule")
    memory = memories(doc)[name]
    old = memory.get("rule") if isinstance(memory.get("rule"), dict) else {"kind": "gd", "lr": 1.0}
    lr = old.get("lr", 1.0)
    momentum = old.get("momentum") if old.get("momentum") is not None else 0.9
    new_kind = choose(rng, [k for k in RULES if k != old.get("kind")], "other rule")
    new = {"kind": new_kind, "lr": lr}
    if new_kind in ("momentum", "muon"):
        new["momentum"] = momentum
    if new_kind == "dgd":
        new["step"] = "proximal"
    memory["rule"] = new
    return f"swap_rule: `{name}` {old.get('kind')} -> {new_kind}"


def _gate_tensor(memory: dict) -> tuple[str | None, object]:
    """The retention gate the memory has now: ("forget", x), ("log_decay", x) or (None, None)."""
    ret = memory.get("retention")
    if isinstance(ret, dict):
        for key in ("log_decay", "forget"):
            if ret.get(key) is not None:
                return key, ret[key]
    return None, None


def swap_retention(doc: dict, rng: random.Random) -> str:
    """Swap a memory's retention gate (Miras §3 choice 3 and §5.3): none, l2 decay global
    (Titans eq. 13) or local (Gated DeltaNet), KL on the simplex (Memora, Miras eq. 27) or
    lq normalization (Moneta, q = 4). A data-dependent gate the memory has is kept."""
    name = choose(rng, _learning(doc), "memory with a retention choice")
    memory = memories(doc)[name]
    key, gate = _gate_tensor(memory)
    if key is None:
        key, gate = "forget", 0.01
    forget = gate if key == "forget" else 0.01
    options = {
        "none": None,
        "l2 global": {"kind": "l2", "mode": "global", key: gate},
        "l2 local": {"kind": "l2", "mode": "local", key: gate},
        "kl": {"kind": "kl", "forget": forget},
        "lq": {"kind": "lq", "q": 4.0, "forget": forget},
    }
    ret = memory.get("retention")
    old = "none" if not isinstance(ret, dict) else (
        f"l2 {ret.get('mode', 'global')}" if ret.get("kind") == "l2" else ret.get("kind"))  # fmt: skip
    new = choose(rng, [k for k in options if k != old], "other retention")
    if options[new] is None:
        memory.pop("retention", None)
    else:
        memory["retention"] = options[new]
    return f"swap_retention: `{name}` {old} -> {new}"


def make_adaptive(doc: dict, rng: random.Random) -> str:
    """Make a static projection adaptive, as Hope does for k, v, eta and alpha (NL §8.1-8.2,
    eqs. 83-85): `p = x W` becomes a read `p_t = M_p(x_t W)` of a new memory at its chunk-start
    state, and M_p learns in context to map keys p_t to self-generated values
    `v^_t = M_p(v_t)` from the shared values v_t of the memory p feeds; its initial state is
    meta-learned by the outer level (NL eq. 28)."""
    candidates = []
    for block in blocks(doc):
        for name, node in block["nodes"].items():
            out = node.get("out") if isinstance(node, dict) else None
            if node.get("op") == "linear" and isinstance(out, list) and len(out) == 2:
                feeds = [m for m, mem in memories(doc).items() if isinstance(mem, dict)
                         and name in (mem.get("keys"), mem.get("values")) and not is_cms(mem)]  # fmt: skip
                if feeds:
                    candidates.append((block, name, feeds[0]))
    block, name, fed = choose(rng, candidates, "per-head linear projection feeding a memory")
    node = block["nodes"][name]
    values = memories(doc)[fed].get("values")
    if not isinstance(values, str):
        raise NotApplicable(f"`{fed}` learns no values")
    heads, dim = node["out"]
    level = level_with_period(doc, _adaptive_period(doc), "proj")
    memory = fresh(doc, f"M_{name}")
    source, hat = fresh(doc, f"{name}_x"), fresh(doc, f"{name}_hat")
    then = list(node.get("then") or [])
    norm = "l2norm" if "l2norm" in then else None  # normalize the read, as Hope's k = l2norm(k0)
    source_node = dict(node, then=[t for t in then if t != "l2norm"])
    if not source_node["then"]:
        source_node.pop("then")
    read = {"op": "read", "memory": memory, "query": source, "order": "chunk_start"}
    del block["nodes"][name]
    raw = fresh(doc, f"{name}_read") if norm else name
    block["nodes"][source] = source_node
    block["nodes"][raw] = read
    if norm:
        block["nodes"][name] = {"op": "l2norm", "in": raw}
    # the self-generated value v^ = M_p(v) (values is `name` itself when v becomes adaptive)
    block["nodes"][hat] = {"op": "read", "memory": memory, "query": values, "order": "chunk_start"}
    memories(doc)[memory] = {
        "structure": {"kind": "mlp", "heads": heads, "dim": dim, "depth": 2, "expansion": 2,
                      "residual": True},  # fmt: skip
        "level": level,
        "keys": name,
        "values": hat,
        "objective": "l2",
        "rule": {"kind": "dgd", "lr": 0.005, "step": "proximal"},  # hope's step cap
        "init": {"kind": "learned"},
        "reset": "sequence",
    }
    return f"make_adaptive: `{name}` is read from a new memory `{memory}` on `{level}` (every {every(doc, level)})"


def _adaptive_period(doc: dict) -> int:
    """The chunk of a new projection memory: an existing clock of 4 or more tokens, else 16."""
    periods = sorted({every(doc, lv) for lv in in_context_levels(doc) if every(doc, lv) >= 4})
    return periods[0] if periods else ADAPTIVE_PERIOD
