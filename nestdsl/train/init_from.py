"""Start a new run from another run's trained weights: `nestdsl train SPEC --init-from RUN`.

Nested Learning §7.3 ("ad-hoc level stacking") turns a pre-trained model into a continual
learner by placing its MLP blocks on levels of a continuum memory system: each CMS block starts
from a pre-trained MLP, `MLP_0^(f_i) = MLP_pretrained_i`, and then learns in context at its own
frequency (an inner rate of 0 gives back the pre-trained model). In nestdsl the CMS block's
starting point is its learned initial state (`init: {kind: learned}`, the parameters
`layers.N.memories.C.initial.I`), so the paper's step is a copy of tensors between checkpoints:

* every tensor of the new model whose name and shape are those of a tensor in RUN's latest
  checkpoint is copied;
* `--init-map DEST=SRC` renames: a new tensor named `DEST` or `DEST.rest` takes RUN's `SRC` or
  `SRC.rest`. `*` stands for one name segment (a layer index) and carries over in order, so
  `layers.*.memories.C.initial.0=layers.*.ops.f.proj.weight` maps every layer. The shapes must
  be equal, or equal once size-1 dimensions are dropped (a one-head memory's `[1, out, in]`
  takes a linear layer's `[out, in]`: both store `[out, in]`, read as `a @ W^T`, so nothing is
  transposed);
* everything else of the new model keeps its fresh initialization. Optimizer state, step,
  random generators and carried memory are not taken from RUN.

Only safetensors and JSON are read (checksums verified, no code runs). docs/training.md has
the worked example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nestdsl.errors import UserError
from nestdsl.train.checkpoint import _parse_safetensors, _read_verified, read_meta
from nestdsl.train.folder import RunFolder


@dataclass(frozen=True)
class NameMap:
    """One `--init-map DEST=SRC`: dotted name prefixes, `*` for one segment."""

    text: str
    dest: str
    src: str

    @property
    def pattern(self) -> re.Pattern:
        return _prefix_pattern(self.dest)

    def source_for(self, name: str) -> str | None:
        """RUN's tensor name for the new tensor `name`, or None when this map does not apply."""
        match = self.pattern.match(name)
        if match is None:
            return None
        *stars, rest = match.groups()
        parts = iter(stars)
        src = ".".join(next(parts) if seg == "*" else seg for seg in self.src.split("."))
        return src + (rest or "")


def _prefix_pattern(prefix: str) -> re.Pattern:
    segments = ["([^.]+)" if seg == "*" else re.escape(seg) for seg in prefix.split(".")]
    return re.compile("^" + r"\.".join(segments) + r"(\..+)?$")


def parse_maps(items: list[str]) -> list[NameMap]:
    """`--init-map` values as NameMaps; UserError naming the first malformed one."""
    maps = []
    for item in items:
        dest, sep, src = item.partition("=")
        dest, src = dest.strip(), src.strip()
        segments = [*dest.split("."), *src.split(".")]
        if not sep or not dest or not src or "" in segments or "=" in src:
            raise UserError(
                f"--init-map {item!r}: expected DEST=SRC, two dotted tensor-name prefixes "
                "(e.g. layers.*.memories.C.initial.0=layers.*.ops.f.proj.weight)"
            )
        if dest.count("*") != src.count("*") or any("*" in s and s != "*" for s in segments):
            raise UserError(
                f"--init-map {item!r}: `*` stands for a whole name segment and must appear as "
                "often in DEST as in SRC"
            )
        maps.append(NameMap(item, dest, src))
    return maps


def fits(dest: tuple[int, ...], src: tuple[int, ...]) -> bool:
    """Equal shapes, or equal once size-1 dimensions are dropped (same values in order)."""
    return dest == src or [d for d in dest if d != 1] == [d for d in src if d != 1]


@dataclass
class SourceRun:
    """RUN's latest checkpoint: where it is, its step and its model tensors."""

    folder: Path
    checkpoint: Path
    step: int
    spec_name: str
    tensors: dict[str, torch.Tensor]
    tokenizer: dict = field(default_factory=dict)  # config.json's: name, vocab, sha256


def read_source(run_dir: str | Path) -> SourceRun:
    """The weights of RUN's latest checkpoint (checksums verified); UserError if there are none."""
    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise UserError(f"--init-from {folder.root}: no such run folder")
    path = folder.latest_checkpoint()
    if path is None:
        raise UserError(f"--init-from {folder.root}: the run has no checkpoint to start from")
    meta = read_meta(path)
    name = "model.safetensors"
    expected = meta.get("files", {}).get(name)
    if expected is None:
        raise UserError(f"checkpoint {path} is corrupt: meta.json does not list {name}")
    tensors = _parse_safetensors(path, name, _read_verified(path, name, expected))
    for alias, target in meta.get("aliases", {}).items():
        tensors[alias] = tensors[target]
    spec = meta.get("spec", {}).get("name", "?")
    try:  # runs written before tokenizers existed read bytes
        tokenizer = folder.read_config().get("tokenizer", {"name": "bytes"})
    except UserError:
        tokenizer = {}
    return SourceRun(folder.root.resolve(), path, int(meta["step"]), spec, tensors, tokenizer)


@dataclass
class InitReport:
    """What a start from RUN did, for the summary line and config.json."""

    source: SourceRun
    maps: list[str]
    copied: list[str] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)  # new name -> RUN's name
    fresh: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)  # same name, another shape: left fresh
    unused: list[str] = field(default_factory=list)
    tokenizer_differs: str | None = None  # the run's tokenizer, when it is not the new run's

    def summary(self) -> str:
        src = self.source
        text = (
            f"init from {src.folder} ({src.spec_name}, step {src.step}): "
            f"{len(self.copied)} tensors copied, {len(self.mapped)} mapped, "
            f"{len(self.fresh)} left fresh, {len(self.unused)} of the run's unused"
        )
        if self.reshaped:
            shown = ", ".join(self.reshaped[:3]) + (" ..." if len(self.reshaped) > 3 else "")
            text += f"\n  fresh because their shapes differ from the run's: {shown}"
        if self.tokenizer_differs:
            text += (
                f"\n  warning: the run read {self.tokenizer_differs}, this one another "
                "tokenizer: copied embedding rows stand for other tokens"
            )
        return text

    def record(self) -> dict:
        """config.json's `init_from`: the source and what came from it (a resume never reloads)."""
        return {
            "run": str(self.source.folder),
            "checkpoint": self.source.checkpoint.name,
            "step": self.source.step,
            "spec": self.source.spec_name,
            "map": list(self.maps),
            "copied": len(self.copied),
            "mapped": dict(self.mapped),
            "fresh": len(self.fresh),
            "unused": len(self.unused),
        }


def plan_init(
    targets: dict[str, tuple[int, ...]], source: SourceRun, maps: list[NameMap]
) -> InitReport:
    """Decide, for every tensor of the new model (name -> shape), where it comes from.

    A map applies to the new tensors its DEST names; when several do, the one with the most
    segments wins. Maps that name nothing, sources RUN lacks and shape mismatches are UserErrors.
    """
    report = InitReport(source, [m.text for m in maps])
    have = {name: tuple(t.shape) for name, t in source.tensors.items()}
    used: set[str] = set()
    hits = {m.text: 0 for m in maps}
    for name, shape in targets.items():
        applying = [m for m in maps if m.pattern.match(name)]
        if applying:
            best = max(applying, key=lambda m: len(m.dest.split(".")))
            hits[best.text] += 1
            src = best.source_for(name)
            if src not in have:
                raise UserError(
                    f"--init-map {best.text}: {name} would come from {src}, which "
                    f"{source.folder} does not have{_near(src, have)}"
                )
            if not fits(shape, have[src]):
                raise UserError(
                    f"--init-map {best.text}: {name} has shape {list(shape)} but "
                    f"{src} in {source.folder} has {list(have[src])}"
                )
            report.mapped[name] = src
            used.add(src)
        elif name in have and have[name] == shape:
            report.copied.append(name)
            used.add(name)
        else:
            report.fresh.append(name)
            if name in have:
                report.reshaped.append(name)
    for text, count in hits.items():
        if count == 0:
            dest = text.partition("=")[0].strip()
            raise UserError(
                f"--init-map {text}: no tensor of the new model is named {dest} or starts with "
                f"{dest}.{_near(dest, targets)}"
            )
    report.unused = [name for name in have if name not in used]
    return report


def _near(name: str, names) -> str:
    """A hint: up to three names sharing the longest leading segments with `name`."""
    parts = name.replace("*", "").split(".")
    for keep in range(len(parts) - 1, 0, -1):
        stem = ".".join(parts[:keep]) + "."
        close = sorted(n for n in names if n.startswith(stem))
        if close:
            return f" (it has e.g. {', '.join(close[:3])})"
    return ""


@torch.no_grad()
def init_from(
    model: torch.nn.Module,
    run_dir: str | Path,
    map_items: list[str],
    tokenizer: dict | None = None,
) -> InitReport:
    """Copy RUN's weights into `model` in place (its parameters stay the same objects, so an
    optimizer built over them keeps them) and say what was copied, mapped and left.
    `tokenizer` is the new run's config.json record, compared with RUN's for a warning."""
    maps = parse_maps(map_items)
    source = read_source(run_dir)
    state = model.state_dict(keep_vars=True)
    report = plan_init({n: tuple(t.shape) for n, t in state.items()}, source, maps)
    theirs = source.tokenizer
    if tokenizer is not None and theirs and (
        theirs.get("name") != tokenizer.get("name") or theirs.get("sha256") != tokenizer.get("sha256")
    ):
        report.tokenizer_differs = str(theirs.get("name", "?"))
    pairs = [(n, n) for n in report.copied] + list(report.mapped.items())
    for name, src in pairs:
        target = state[name]
        target.copy_(source.tensors[src].reshape(target.shape))  # [dest shape]: same values
    return report
