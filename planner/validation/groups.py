"""Who a validation run comes from and how the errors group: by source (the document that
published it), framework, GPU, and the stack family x GPU generation the error bands use.

A run's `source` is a free-text citation; `source_group` normalises it to the document, so runs
of one table or one benchmark page form one source:

- a paper (`Narayanan et al. 2021, '...', Table 1; ...`): `Narayanan 2021 Table 1`, the first
  table it cites (Korthikanti et al. 2022's Table 5 rows and its section 6.3 run both cite their
  configurations from Table 3, so they are one source, as in docs/accuracy.md);
- a repository (`pytorch/torchtitan docs/performance.md at commit ...`,
  `FlagOpen/FlagPerf @ 1b5a..., training/nvidia/llama3_8B-megatron/README.md (...)`): the
  repository's name and the first document it names, by file stem or, for a README inside a
  folder, the folder (`torchtitan performance`, `FlagPerf llama3_8B-megatron`); the two commits
  of fms-fsdp's README are one source (`fms-fsdp README`);
- anything else: the text before its first `,`, `;` or `(`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from planner.uncertainty import gpu_generation, stack_family
from planner.validation import Comparison, summary

_PAPER = re.compile(r"^\s*([A-Z][\w'-]+) et al\.?,? \(?(\d{4})")
_TABLE = re.compile(r"\bTable (\d+)")
_REPO = re.compile(r"^\s*([\w.-]+/[\w.-]+)(?=[\s,@]|$)")
_DOC = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.(?:md|mdx|rst|txt|ipynb))\b")


def source_group(source: str) -> str:
    """The document a run's `source` citation names (see the module docstring)."""
    m = _PAPER.match(source)
    if m:
        table = _TABLE.search(source)
        return f"{m[1]} {m[2]}" + (f" Table {table[1]}" if table else "")
    m = _REPO.match(source)
    if m:
        repo = m[1].split("/")[1]
        doc = _DOC.search(source, m.end())
        if not doc:
            return repo
        parts = doc[1].split("/")
        stem = parts[-1].rsplit(".", 1)[0]
        if stem.lower() == "readme" and len(parts) > 1:
            stem = parts[-2]  # a folder's README: the folder names it
        return f"{repo} {stem}"
    head = re.split(r"[,;(]", source, maxsplit=1)[0].strip()
    return head or "(no source)"


def band_group(c: Comparison) -> str:
    """`family/generation` of a compared run (e.g. `current/hopper`), the error bands' key."""
    return f"{stack_family(c.prediction['stack'])}/{gpu_generation(c.gpu)}"


KEYS: dict[str, Callable[[Comparison], str]] = {
    "by_source": lambda c: source_group(c.run.source),
    "by_framework": lambda c: c.run.framework or "(none)",
    "by_gpu": lambda c: c.gpu,
    "by_band_group": band_group,
}


def grouped(comps: Iterable[Comparison], key: Callable[[Comparison], str]) -> dict[str, list[Comparison]]:
    """Comparisons by `key`, in first-seen order."""
    out: dict[str, list[Comparison]] = {}
    for c in comps:
        out.setdefault(key(c), []).append(c)
    return out


def summaries(comps: list[Comparison], key: Callable[[Comparison], str]) -> dict[str, dict[str, float]]:
    """`summary` of each group."""
    return {k: summary(v) for k, v in grouped(comps, key).items()}


def report(sets: dict[str, list[Comparison]]) -> dict:
    """Every summary `paraplan validate --json` prints: per set (with its sources inside it, as
    a source belongs to a set), and over all sets by framework, GPU and band group."""
    every = [c for comps in sets.values() for c in comps]
    out: dict = {"sets": {name: {**summary(comps), "by_source": summaries(comps, KEYS["by_source"])}
                          for name, comps in sets.items()}}
    for name in ("by_framework", "by_gpu", "by_band_group"):
        out[name] = summaries(every, KEYS[name])
    return out
