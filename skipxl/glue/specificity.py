"""Do SPARTAN parents specialise? Per-token routing, scored against chance and a step-0 control.

SPARTAN (arXiv 2211.16634) reports that parent cells specialise in topics. ``parents.json``
(:mod:`skipxl.glue.parents`) counts how often each parent is chosen on dev in aggregate, which
tells popular parents from rare ones but not *which tokens* go where. Here every real dev token
``t`` of layer ``l`` contributes its top-k parent set ``S_t``; for a grouping ``g(t)`` of the
tokens, the mutual information between the chosen parent and the group,

    I(parent; g) = H(P) - sum_g w_g H(P_g),   P_g(e) = #{t in g : e in S_t} / (k |g|),

(nats; ``w_g`` the group's token share, ``P`` the pooled usage) says how much knowing the group
tells about the parents chosen. Four groupings:

* ``example``: the dev example the token belongs to;
* ``topic``: a bag-of-words topic proxy (GLUE has no topic labels): k-means (scikit-learn) over
  each example's mean *input* word embedding, without special tokens. The embedding table is
  frozen, so both models below see the same topics;
* ``label``: the example's gold class;
* ``token``: the token's own vocabulary id - the lexical reference: routing that follows words
  rather than topics scores high here and low on ``topic``.

Two controls make the numbers mean something:

1. **chance**: plug-in MI is biased upward by finite counts (about ``(E - 1)(G - 1) / 2T`` nats;
   large for ``G`` = hundreds of examples). Each MI is reported beside the mean over
   ``n_perm`` shuffles of the group labels across tokens (group sizes kept): ``excess = I - null``.
2. **step 0**: the backbone's hidden states already separate examples and topics, so even an
   untrained random parent matrix routes them apart. The same run's memory at initialisation is
   rebuilt exactly (:func:`~skipxl.glue.finetune.build_model` seeds with ``init_seed`` whatever
   the global RNG holds) and scored on the same tokens. What training added is
   ``excess(trained) - excess(step 0)``; specialisation is only *learned* where that is positive.

``main(RUN_DIR ...)`` (``python recipes/glue.py specificity``) writes ``specificity.json`` and
``.md``: per run and layer the four groupings for both models, and over runs the mean of the
learned difference per grouping with a bootstrap CI over runs (seeds).
"""

from __future__ import annotations

import dataclasses as dc
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipxl.config_io import save_json
from skipxl.errors import SkipxlError

GROUPINGS = ("example", "topic", "label", "token")
JSON_NAME, MD_NAME = "specificity.json", "specificity.md"


# ------------------------------------------------------------------------------- statistics
def mutual_information(sel: np.ndarray, groups: np.ndarray, parents: int) -> float:
    """``I(parent; group)`` in nats from ``sel [T, k]`` parent ids and ``groups [T]`` ids >= 0."""
    k = sel.shape[1]
    n_groups = int(groups.max()) + 1
    counts = np.zeros((n_groups, parents))  # [G, E]
    np.add.at(counts, (np.repeat(groups, k), sel.ravel()), 1.0)
    sizes = counts.sum(axis=1)  # [G] = k |g|
    keep = sizes > 0
    counts, sizes = counts[keep], sizes[keep]
    pooled = counts.sum(axis=0) / sizes.sum()  # [E]
    p_g = counts / sizes[:, None]  # [G, E]
    return _entropy(pooled) - float((sizes / sizes.sum()) @ _entropy_rows(p_g))


def _entropy(p: np.ndarray) -> float:
    return float(_entropy_rows(p[None])[0])


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)  # [G]


def shuffled_mi(sel: np.ndarray, groups: np.ndarray, parents: int, *, n_perm: int, seed: int) -> float:
    """Mean MI over ``n_perm`` permutations of the group labels across tokens (the chance level)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([mutual_information(sel, rng.permutation(groups), parents) for _ in range(n_perm)]))


def layer_scores(
    sel: np.ndarray, groupings: dict[str, np.ndarray], parents: int, *, n_perm: int, seed: int
) -> dict[str, dict[str, float]]:
    """``{grouping: {mi, null, excess, excess_frac}}`` of one layer; ``excess_frac = excess / H(P)``."""
    k = sel.shape[1]
    pooled = np.bincount(sel.ravel(), minlength=parents) / sel.size  # [E]
    h = _entropy(pooled)
    out = {}
    for name, groups in groupings.items():
        mi = mutual_information(sel, groups, parents)
        null = shuffled_mi(sel, groups, parents, n_perm=n_perm, seed=seed)
        out[name] = {
            "mi": mi,
            "null": null,
            "excess": mi - null,
            "excess_frac": (mi - null) / h if h > 0 else 0.0,
        }
    out["entropy"] = {"pooled": h, "max": math.log(parents), "k": k}
    return out


# ------------------------------------------------------------------------------- routing
def token_routing(
    model: torch.nn.Module, data: Any, pad_id: int, batch_size: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every real token's selected parents per layer, ``[T, k]`` each, and its example id ``[T]``.

    Batches run in example order and ``top_idx[mask]`` keeps row-major order, so token ``t`` is
    position ``t`` of the concatenated ``data.input_ids``; padding positions are dropped with the
    batch's mask, so the routing does not depend on how examples were batched.
    """
    from skipxl.glue.finetune import collate

    state = getattr(model, "spartan_state", None)
    if state is None:
        raise SkipxlError("the model has no SPARTAN memory; pass runs trained with --method spartan")
    state.selections = {}
    rows: dict[int, list[np.ndarray]] = {}
    example_ids = []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                idx = list(range(start, min(start + batch_size, len(data))))
                batch = collate(data, idx, pad_id, regression=False)
                batch.pop("labels")
                state.selections.clear()
                model(**batch)
                real = batch["attention_mask"].bool()  # [b, S]
                for layer, (top_idx,) in sorted(state.selections.items()):
                    rows.setdefault(layer, []).append(top_idx[real].cpu().numpy())  # [t, k]
                example_ids.append(np.repeat(np.array(idx), real.sum(dim=1).numpy()))  # [t]
    finally:
        state.selections = None
    return [np.concatenate(rows[layer]) for layer in sorted(rows)], np.concatenate(example_ids)


def topic_clusters(
    model: torch.nn.Module, data: Any, special_ids: Sequence[int], n_topics: int, seed: int
) -> np.ndarray:
    """``[N]`` k-means cluster of each example's mean input word embedding (specials excluded)."""
    from sklearn.cluster import KMeans

    table = model.get_input_embeddings().weight.detach().float()  # [V, H]
    special = set(int(i) for i in special_ids)
    means = []
    for ids in data.input_ids:
        words = [i for i in ids if i not in special] or list(ids)
        means.append(table[torch.tensor(words)].mean(dim=0).numpy())  # [H]
    n_topics = min(n_topics, len(means))
    return KMeans(n_clusters=n_topics, n_init=10, random_state=seed).fit_predict(np.stack(means))  # [N]


# ------------------------------------------------------------------------------- runs
def analyse_run(
    run_dir: str | Path,
    *,
    n_topics: int = 8,
    n_perm: int = 20,
    limit: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Scores of one SPARTAN run folder (its ``method/`` file) and of its step-0 memory."""
    from skipxl.glue.finetune import build_model, encode_evals
    from skipxl.glue.method_io import METHOD_DIR, load_method_model
    from skipxl.glue.model import load_tokenizer

    run = Path(run_dir)
    trained, cfg = load_method_model(run / METHOD_DIR)
    if cfg.method != "spartan":
        raise SkipxlError(
            f"{run} was trained with --method {cfg.method}; the analysis needs --method spartan"
        )
    initial = build_model(cfg).eval()  # the same init_seed: the memory this run started from
    if limit is not None:  # the first ``limit`` dev examples, through the run's own example limit
        cfg = dc.replace(cfg, max_eval_examples=min(limit, cfg.max_eval_examples or limit))
    tokenizer = load_tokenizer(cfg.model)
    split, (_, data) = next(iter(encode_evals(cfg, tokenizer).items()))
    pad_id = int(tokenizer.pad_token_id or 0)
    sel_trained, example = token_routing(trained, data, pad_id, batch_size)
    sel_initial, example_again = token_routing(initial, data, pad_id, batch_size)
    if not np.array_equal(example, example_again):  # same tokens in the same order, or nothing pairs
        raise SkipxlError(f"{run}: the trained and step-0 models saw different tokens; report this as a bug")
    groups = {
        "example": example,
        "topic": topic_clusters(trained, data, tokenizer.all_special_ids, n_topics, cfg.init_seed)[example],
    }
    if not cfg.spec.is_regression:
        groups["label"] = np.asarray(data.labels, dtype=np.int64)[example]
    groups["token"] = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in data.input_ids])  # [T]
    parents = cfg.spartan_parents
    layers = []
    for layer, (a, b) in enumerate(zip(sel_trained, sel_initial, strict=True)):
        seed = cfg.init_seed * 1000 + layer
        layers.append(
            {
                "layer": layer,
                "trained": layer_scores(a, groups, parents, n_perm=n_perm, seed=seed),
                "step0": layer_scores(b, groups, parents, n_perm=n_perm, seed=seed),
                "changed_tokens": float(np.mean(np.any(np.sort(a, 1) != np.sort(b, 1), axis=1))),
            }
        )
    return {
        "run": str(run),
        "task": cfg.task,
        "seed": cfg.init_seed,
        "split": split,
        "examples": len(data),
        "tokens": int(example.size),
        "parents": parents,
        "topk": cfg.spartan_topk,
        "topics": int(groups["topic"].max()) + 1,
        "groupings": sorted(groups),
        "layers": layers,
    }


def learned(runs: list[dict[str, Any]], *, n_boot: int = 10_000) -> list[dict[str, Any]]:
    """Per task and grouping: ``excess(trained) - excess(step 0)`` (nats) averaged over layers,
    mean over runs with a bootstrap CI over runs (seeds)."""
    from skipxl.analysis.claims import paired_bootstrap

    rows = []
    for task in sorted({r["task"] for r in runs}):
        mine = [r for r in runs if r["task"] == task]
        for name in GROUPINGS:
            if not all(name in r["groupings"] for r in mine):
                continue
            per_run = [
                np.mean(
                    [lay["trained"][name]["excess"] - lay["step0"][name]["excess"] for lay in r["layers"]]
                )
                for r in mine
            ]
            point, ci = paired_bootstrap(per_run, n_boot=n_boot)
            trained = np.mean([[lay["trained"][name]["excess"] for lay in r["layers"]] for r in mine])
            step0 = np.mean([[lay["step0"][name]["excess"] for lay in r["layers"]] for r in mine])
            rows.append(
                {
                    "task": task,
                    "grouping": name,
                    "runs": len(mine),
                    "trained_excess": float(trained),
                    "step0_excess": float(step0),
                    "learned": point,
                    "ci_low": None if ci is None else ci[0],
                    "ci_high": None if ci is None else ci[1],
                }
            )
    return rows


def _cell(score: dict[str, float]) -> str:
    return f"{score['excess']:.4f} ({score['excess_frac']:.1%})"


def render_markdown(runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    lines = [
        "# SPARTAN parent specificity: trained memory vs its step-0 initialisation",
        "",
        "Excess MI = I(parent; grouping) - its mean under shuffled group labels (nats; in brackets as a",
        "fraction of the pooled parent entropy H(P)). learned = excess(trained) - excess(step 0), averaged",
        "over layers; CI = 95% bootstrap over runs. See skipxl/glue/specificity.py for the definitions.",
        "",
        "| task | grouping | runs | trained excess | step-0 excess | learned [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        ci = "no CI (1 run)" if s["ci_low"] is None else f"[{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
        lines.append(
            f"| {s['task']} | {s['grouping']} | {s['runs']} | {s['trained_excess']:.4f} | "
            f"{s['step0_excess']:.4f} | {s['learned']:+.4f} {ci} |"
        )
    for r in runs:
        lines += [
            "",
            f"## {r['task']} seed {r['seed']} ({r['examples']} {r['split']} examples, {r['tokens']} tokens, "
            f"{r['topics']} topics, E {r['parents']}, k {r['topk']})",
            "",
            "| layer | H(P) trained / step 0 | tokens re-routed | "
            + " | ".join(f"{g} excess trained / step 0" for g in r["groupings"])
            + " |",
            "|---|---|---|" + "---|" * len(r["groupings"]),
        ]
        for lay in r["layers"]:
            t, s = lay["trained"], lay["step0"]
            cells = [f"{_cell(t[g])} / {_cell(s[g])}" for g in r["groupings"]]
            lines.append(
                f"| {lay['layer']} | {t['entropy']['pooled']:.3f} / {s['entropy']['pooled']:.3f} | "
                f"{lay['changed_tokens']:.1%} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def main(
    *run_dirs: str,
    out: str | None = None,
    topics: int = 8,
    n_perm: int = 20,
    limit: int | None = None,
    batch_size: int = 64,
) -> None:
    """Parent specificity of SPARTAN runs against chance and their step-0 memory.

    Args:
        run_dirs: finished SPARTAN run folders (each with its method/ folder), e.g. a sweep's
            runs/glue/mrpc/spartan/seed_*.
        out: folder for specificity.{json,md} (default: the first run's parent).
        topics: k-means clusters of the topic proxy.
        n_perm: label shuffles of the chance level.
        limit: score only the first N dev examples.
        batch_size: evaluation batch size.
    """
    from skipxl.engine.flags import coerce

    if not run_dirs:
        raise SkipxlError("give at least one run folder: glue.py specificity RUN_DIR [RUN_DIR ...]")
    topics, n_perm = coerce("topics", topics, int), coerce("n_perm", n_perm, int)
    if topics < 2 or n_perm < 1:
        raise SkipxlError(f"--topics must be >= 2 and --n_perm >= 1, got {topics} and {n_perm}")
    runs = [
        analyse_run(
            d,
            n_topics=topics,
            n_perm=n_perm,
            limit=None if limit is None else coerce("limit", limit, int),
            batch_size=coerce("batch_size", batch_size, int),
        )
        for d in run_dirs
    ]
    summary = learned(runs)
    out_dir = Path(out) if out is not None else Path(run_dirs[0]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json({"runs": runs, "learned": summary}, out_dir / JSON_NAME)
    (out_dir / MD_NAME).write_text(render_markdown(runs, summary))
    for s in summary:
        ci = "" if s["ci_low"] is None else f" [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
        print(
            f"{s['task']} {s['grouping']}: excess MI trained {s['trained_excess']:.4f} vs step 0 "
            f"{s['step0_excess']:.4f} nats, learned {s['learned']:+.4f}{ci} ({s['runs']} runs)"
        )
    print(f"wrote {out_dir / JSON_NAME}, {out_dir / MD_NAME}")
