"""``skipxl heads``: are a layer's attention heads redundant, and does cross-head attention change that?

The paper (arXiv 2311.08123) motivates stochastic cross-head attention by saying that
redistributing information between heads "prevents redundancy", but never measures redundancy.
Per layer, three diagnostics (Michel et al. 2019 for ablation; Clark et al. 2019 for
attention-distribution distances):

* **attention similarity**: ``1 - JS(p_i, p_j)`` for heads ``i, j``, the Jensen-Shannon
  divergence in bits (so in ``[0, 1]``) of the two heads' attention distributions over the keys,
  averaged over queries. 1 = the heads look at the same positions.
* **output similarity**: cosine similarity of the heads' contributions to the layer output
  (head ``h``'s context vectors through its own columns of the output projection), over all
  positions. 1 = the heads write the same thing.
* **ablation**: the evaluation loss increase when one head's contribution is removed (its
  slice of the output projection's input set to zero), one head at a time.

For Transformer-XL the per-head probabilities come from :func:`head_attention`, a pure
re-computation with the attention module's own weights on the inputs captured by a forward
pre-hook (the model's numbers are untouched; the tests check the recomputed output equals the
module's). For a fine-tuned Hugging Face BERT (``skipxl glue-heads MODEL_DIR``) the
probabilities are the model's ``output_attentions`` and the contexts are captured before the
attention output projection.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skipxl.errors import SkipxlError


# ------------------------------------------------------------------------------- pure math
def js_similarity(p: Tensor, q: Tensor) -> Tensor:
    """``1 - JS(p, q)`` in bits per row of two distributions ``[..., K]`` -> ``[...]`` in [0, 1]."""
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)  # [..., K]
    kl_pm = torch.special.xlogy(p, p).sum(-1) - torch.special.xlogy(p, m).sum(-1)  # [...]
    kl_qm = torch.special.xlogy(q, q).sum(-1) - torch.special.xlogy(q, m).sum(-1)  # [...]
    js = (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp(0.0, 1.0)
    return 1.0 - js


def pairwise_js(prob: Tensor, rows: Tensor | None = None) -> tuple[Tensor, int]:
    """Summed ``1 - JS`` over query rows for every head pair: ``prob [B, H, T, K]`` -> ``[H, H]``, n rows.

    ``rows [B, T]`` bool selects the queries that count (GLUE: not padding).
    """
    _, h, _, _ = prob.shape
    out = torch.zeros(h, h, dtype=torch.float64)
    keep = None if rows is None else rows[:, None, :].expand(-1, 1, -1)  # [B, 1, T]
    for i in range(h):
        sim = js_similarity(prob[:, i : i + 1], prob)  # [B, H, T]
        if keep is not None:
            sim = sim * keep
        out[i] = sim.sum(dim=(0, 2)).cpu()
    n = prob.size(0) * prob.size(2) if rows is None else int(rows.sum())
    return out, n


def head_contributions(vec: Tensor, weight: Tensor) -> Tensor:
    """Each head's share of the output projection: ``vec [B, T, H, Dh]``, ``weight [D, H*Dh]``
    -> ``[B, T, H, D]`` (summed over heads, it is ``vec @ weight.T`` without the bias)."""
    h, dh = vec.shape[-2:]
    w = weight.view(weight.size(0), h, dh)  # [D, H, Dh]
    return torch.einsum("bthd,ehd->bthe", vec, w)  # [B, T, H, D]


@dataclass
class LayerStats:
    """Running sums for one layer's head-pair similarities."""

    n_head: int
    js_sum: Tensor = field(init=False)
    dots: Tensor = field(init=False)
    rows: int = 0

    def __post_init__(self) -> None:
        self.js_sum = torch.zeros(self.n_head, self.n_head, dtype=torch.float64)
        self.dots = torch.zeros(self.n_head, self.n_head, dtype=torch.float64)

    def add(self, prob: Tensor, contrib: Tensor, rows: Tensor | None = None) -> None:
        """``prob [B, H, T, K]``, ``contrib [B, T, H, D]``, ``rows [B, T]`` (None: all)."""
        js, n = pairwise_js(prob, rows)
        self.js_sum += js
        self.rows += n
        c = contrib if rows is None else contrib[rows]  # [B, T, H, D] or [N, H, D]
        flat = c.transpose(-2, 0).reshape(self.n_head, -1).double()  # [H, N*D]
        self.dots += (flat @ flat.T).cpu()

    def js(self) -> Tensor:
        return self.js_sum / max(self.rows, 1)  # [H, H]

    def cosine(self) -> Tensor:
        norm = self.dots.diagonal().clamp_min(1e-300).sqrt()  # [H]
        return self.dots / (norm[:, None] * norm[None, :])  # [H, H]


def off_diagonal_mean(m: Tensor) -> float:
    h = m.size(0)
    if h < 2:
        return math.nan
    return float((m.sum() - m.diagonal().sum()) / (h * (h - 1)))


@contextmanager
def ablated(proj: nn.Linear, head: int, n_head: int) -> Iterator[None]:
    """Remove one head: zero its slice of the output projection's input while in the block."""
    dh = proj.in_features // n_head

    def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[..., head * dh : (head + 1) * dh] = 0.0
        return (x, *args[1:])

    handle = proj.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------- Transformer-XL
def head_attention(
    attn: nn.Module,
    x: Tensor,
    mem: Tensor | None,
    r: Tensor,
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    attn_mask: Tensor,
    pos_index: Tensor | None = None,
    head_index: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Re-compute a :class:`~skipxl.model.attention.RelPartialLearnableAttention` call in evaluation
    mode, keeping the per-head tensors: ``(prob [B, H, T, K], vec [B, T, H, Dh], out [B, T, D])``.

    Same arguments as the module's forward; ``out`` equals the module's output (tested).
    """
    from skipxl.model.attention_kernels import position_scores

    bsz, qlen, _ = x.shape
    q, k, v, r_k, pos_index = attn.project(x, mem, r, pos_index, head_index)  # the module's own inputs
    h, dh = attn.n_head, attn.d_head
    ac = torch.einsum("bihd,bjhd->bhij", q + r_w_bias, k)  # [B, H, T, K]
    bd = position_scores(q, r_r_bias, r_k, pos_index, attn.positions)  # [B, H, T, K]
    score = (ac.float() + bd.float()) * attn.scale  # [B, H, T, K] fp32
    prob = torch.softmax(score.masked_fill(attn_mask, float("-inf")), dim=-1).to(v.dtype)  # [B, H, T, K]
    vec = torch.einsum("bhij,bjhd->bihd", prob, v)  # [B, T, H, Dh]
    o = attn.o_net(vec.reshape(bsz, qlen, h * dh))  # [B, T, D]
    out = x + o if attn.pre_lnorm else attn.layer_norm(x + o)
    return prob, vec, out


@contextmanager
def captured_attention_inputs(model: nn.Module) -> Iterator[list[list[tuple[Any, ...]]]]:
    """Record the arguments of every layer's attention call (one list per layer, one entry per call)."""
    calls: list[list[tuple[Any, ...]]] = [[] for _ in model.layers]
    handles = []
    for i, layer in enumerate(model.layers):

        def hook(_m: nn.Module, args: tuple[Any, ...], i: int = i) -> None:
            calls[i].append(args)

        handles.append(layer.dec_attn.register_forward_pre_hook(hook))
    try:
        yield calls
    finally:
        for hd in handles:
            hd.remove()


@torch.no_grad()
def lm_head_diagnostics(
    model: nn.Module, tokens: np.ndarray, protocol: Any, *, max_batches: int = 20, device: str = "cpu"
) -> dict[str, Any]:
    """Per-layer head similarities on the first ``max_batches`` evaluation segments, and per-head
    ablation loss increases on the same segments (the evaluation protocol ``protocol``)."""
    from skipxl.data import eval_batches
    from skipxl.engine.evaluate import evaluate_split

    model.eval()
    stats = [LayerStats(model.n_head) for _ in model.layers]
    mems = None
    for k, (inp, tgt) in enumerate(
        eval_batches(tokens, protocol.batch_size, protocol.tgt_len, protocol.ext_len)
    ):
        if k >= max_batches:
            break
        with captured_attention_inputs(model) as calls:
            out = model(inp.to(device), targets=tgt.to(device), mems=mems, context=protocol.context)
        mems = out.mems
        for layer, (block, layer_calls) in enumerate(zip(model.layers, calls, strict=True)):
            for args in layer_calls:
                prob, vec, _ = head_attention(block.dec_attn, *args)
                stats[layer].add(prob, head_contributions(vec, block.dec_attn.o_net.weight))
    base = evaluate_split(model, tokens, protocol, device=device, max_batches=max_batches).loss
    ablation = []
    for block in model.layers:
        row = []
        for h in range(model.n_head):
            with ablated(block.dec_attn.o_net, h, model.n_head):
                row.append(
                    evaluate_split(model, tokens, protocol, device=device, max_batches=max_batches).loss
                    - base
                )
        ablation.append(row)
    return _summary(stats, ablation, base)


def _summary(stats: list[LayerStats], ablation: list[list[float]], base_loss: float) -> dict[str, Any]:
    layers = []
    for i, (s, abl) in enumerate(zip(stats, ablation, strict=True)):
        js, cos = s.js(), s.cosine()
        layers.append(
            {
                "layer": i,
                "attention_similarity": js.tolist(),
                "output_cosine": cos.tolist(),
                "mean_attention_similarity": off_diagonal_mean(js),
                "mean_output_cosine": off_diagonal_mean(cos),
                "ablation_loss_increase": abl,
            }
        )
    return {
        "base_loss": base_loss,
        "layers": layers,
        "mean_attention_similarity": float(np.mean([x["mean_attention_similarity"] for x in layers])),
        "mean_output_cosine": float(np.mean([x["mean_output_cosine"] for x in layers])),
        "mean_ablation_loss_increase": float(np.mean([np.mean(x["ablation_loss_increase"]) for x in layers])),
    }


def _csv(rows: list[tuple[str, dict[str, Any]]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["run", "layer", "head", "mean_attention_similarity", "mean_output_cosine", "ablation_loss_increase"]
    )
    for name, res in rows:
        for layer in res["layers"]:
            js, cos = np.array(layer["attention_similarity"]), np.array(layer["output_cosine"])
            for h, inc in enumerate(layer["ablation_loss_increase"]):
                others = [j for j in range(len(js)) if j != h]
                sim, c = js[h, others].mean(), cos[h, others].mean()
                w.writerow([name, layer["layer"], h, f"{sim:.6f}", f"{c:.6f}", f"{inc:.6f}"])
    return buf.getvalue()


def _write(out_dir: Path, name: str, res: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "heads.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (out_dir / "heads.csv").write_text(_csv([(name, res)]))
    print(
        f"{name}: attention similarity {res['mean_attention_similarity']:.4f}, output cosine "
        f"{res['mean_output_cosine']:.4f}, mean ablation loss increase "
        f"{res['mean_ablation_loss_increase']:.5f} (base loss {res['base_loss']:.4f}); "
        f"wrote {out_dir / 'heads.json'}, {out_dir / 'heads.csv'}"
    )


#: Summary metrics compared between variants, and what a positive difference (treatment minus
#: baseline) means for each.
COMPARED = {
    "mean_attention_similarity": ("heads attend more alike", "heads attend more differently"),
    "mean_output_cosine": ("heads write more alike", "heads write more differently"),
    "mean_ablation_loss_increase": ("single heads matter more", "single heads matter less"),
}
MIN_PAIRED = 3  # below this many paired seeds a bootstrap CI is degenerate: no reading


def compare_heads(
    results: list[dict[str, Any]],
    *,
    baseline: str = "baseline",
    treatment: str = "cross_head",
    n_boot: int = 10_000,
) -> list[dict[str, Any]]:
    """Paired per-seed differences ``treatment - baseline`` of each summary metric, bootstrap CI.

    The question of arXiv 2311.08123's motivation ("prevents redundancy"): does cross-head
    attention make a layer's heads more alike, more different, or neither? A reading is given only
    when the 95% CI over at least :data:`MIN_PAIRED` paired seeds excludes zero.
    """
    from skipxl.analysis.claims import paired_bootstrap

    by = {(r["variant"], r["seed"]): r for r in results}
    seeds = sorted(s for v, s in by if v == baseline and (treatment, s) in by)
    if not seeds:
        raise SkipxlError(f"no seed has both a {baseline} and a {treatment} run; pass runs of the same seeds")
    rows = []
    for metric, (up, down) in COMPARED.items():
        base = [float(by[(baseline, s)][metric]) for s in seeds]
        treat = [float(by[(treatment, s)][metric]) for s in seeds]
        point, ci = paired_bootstrap([t - b for t, b in zip(treat, base, strict=True)], n_boot=n_boot)
        if ci is None or len(seeds) < MIN_PAIRED:
            reading = f"cannot tell ({len(seeds)} paired seed(s))"
        elif ci[0] > 0:
            reading = up
        elif ci[1] < 0:
            reading = down
        else:
            reading = "neither (the CI includes 0)"
        rows.append(
            {
                "metric": metric,
                "seeds": seeds,
                baseline: base,
                treatment: treat,
                "diff": point,
                "ci": ci,
                "reading": reading,
            }
        )
    return rows


def _compare_markdown(rows: list[dict[str, Any]], baseline: str, treatment: str) -> str:
    lines = [
        f"| metric | {baseline} (mean) | {treatment} (mean) | difference | 95% CI | reading |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "n/a" if r["ci"] is None else f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"
        lines.append(
            f"| {r['metric']} | {np.mean(r[baseline]):.4f} | {np.mean(r[treatment]):.4f} | "
            f"{r['diff']:+.4f} | {ci} | {r['reading']} |"
        )
    return "\n".join(lines) + "\n"


def main(
    *run_dirs: str,
    split: str = "valid",
    max_batches: int = 20,
    tag: str | None = None,
    device: str | None = None,
    out: str | None = None,
    n_boot: int = 10_000,
) -> None:
    """Head diagnostics of Transformer-XL run folders; writes RUN_DIR/heads.{json,csv}.

    Given baseline and cross-head runs of shared seeds, also writes the paired comparison
    (:func:`compare_heads`) to ``OUT/heads_compare.{json,md}``.

    Args:
        run_dirs: training run folders (baseline and cross-head runs of the same seeds to compare).
        split: valid or test.
        max_batches: evaluation segments per stream used for similarities and ablations.
        tag: checkpoint folder (default: latest).
        device: cpu or cuda.
        out: folder for heads_compare.{json,md} (default: the first run's grandparent, the sweep).
        n_boot: bootstrap resamples of the comparison.
    """
    from skipxl.config_io import load_json
    from skipxl.data import load_corpus
    from skipxl.engine.checkpoint import fp32_state_dict, resolve_tag
    from skipxl.engine.config import run_config_from_dict
    from skipxl.engine.evaluate import SPLIT_ALIASES
    from skipxl.engine.flags import coerce
    from skipxl.engine.run_dir import CHECKPOINTS, CONFIG
    from skipxl.model import TransformerXL

    if not run_dirs:
        raise SkipxlError("give at least one run folder: skipxl heads RUN_DIR [RUN_DIR ...]")
    if split not in SPLIT_ALIASES:
        raise SkipxlError(f"unknown --split {split!r}; choose valid or test")
    max_batches = coerce("max_batches", max_batches, int)
    if max_batches < 1:
        raise SkipxlError(f"--max_batches must be >= 1, got {max_batches}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for d in run_dirs:
        run = Path(d)
        if not (run / CONFIG).is_file():
            raise SkipxlError(
                f"{run} is not a run folder (no config.json); pass the --out folder of a training run"
            )
        cfg = run_config_from_dict(load_json(run / CONFIG))
        corpus = load_corpus(cfg.data)
        model = TransformerXL(cfg.model)
        model.load_state_dict(fp32_state_dict(run / CHECKPOINTS, resolve_tag(run / CHECKPOINTS, tag)))
        model.to(dev)
        tokens = np.asarray(corpus.splits[SPLIT_ALIASES[split]])
        res = lm_head_diagnostics(model, tokens, cfg.eval, max_batches=max_batches, device=dev)
        res.update(variant=cfg.variant, seed=cfg.train.seed, split=split)
        _write(run, run.name, res)
        results.append(res)
    variants = {r["variant"] for r in results}
    if {"baseline", "cross_head"} <= variants:
        write_comparison(results, Path(out) if out else Path(run_dirs[0]).parent.parent, n_boot=n_boot)


def write_comparison(results: list[dict[str, Any]], out_dir: Path, *, n_boot: int = 10_000) -> None:
    """Baseline vs cross-head (paired seeds) to ``out_dir/heads_compare.{json,md}``, and printed."""
    rows = compare_heads(results, n_boot=n_boot)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "heads_compare.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    table = _compare_markdown(rows, "baseline", "cross_head")
    (out_dir / "heads_compare.md").write_text(table)
    print(table + f"wrote {out_dir / 'heads_compare.json'}, {out_dir / 'heads_compare.md'}")


# ------------------------------------------------------------------------------ GLUE / BERT
def _bert_layers(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not hasattr(layers[0], "attention"):
        raise SkipxlError(
            f"{type(model).__name__} is not a BERT-family model (encoder.layer[i].attention); "
            "glue-heads supports BERT-like encoders"
        )
    return list(layers)


@torch.no_grad()
def glue_head_diagnostics(
    model: nn.Module, batches: list[dict[str, Tensor]], regression: bool
) -> dict[str, Any]:
    """The same diagnostics for a BERT classifier on labelled ``batches`` (loss = the task loss)."""
    from skipxl.glue.finetune import loss_of

    model.eval()
    layers = _bert_layers(model)
    n_head = model.config.num_attention_heads
    projs = [layer.attention.output.dense for layer in layers]
    stats = [LayerStats(n_head) for _ in layers]

    def loss() -> float:
        total, n = 0.0, 0
        for b in batches:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            total += float(loss_of(model(**inputs).logits, b["labels"], regression)) * len(b["labels"])
            n += len(b["labels"])
        return total / n

    contexts: list[Tensor] = []
    handles = [p.register_forward_pre_hook(lambda _m, a: contexts.append(a[0])) for p in projs]
    try:
        for b in batches:
            contexts.clear()
            inputs = {k: v for k, v in b.items() if k != "labels"}
            out = model(**inputs, output_attentions=True)
            if out.attentions is None or any(a is None for a in out.attentions):
                raise SkipxlError(
                    "the model returned no attention probabilities; load it with eager attention"
                )
            rows = b["attention_mask"].bool()  # [B, T]
            for i, (prob, ctx) in enumerate(zip(out.attentions, contexts, strict=True)):
                bsz, t, _ = ctx.shape
                vec = ctx.view(bsz, t, n_head, -1)  # [B, T, H, Dh]
                stats[i].add(prob.float(), head_contributions(vec, projs[i].weight), rows)
    finally:
        for hd in handles:
            hd.remove()
    base = loss()
    ablation = []
    for p in projs:
        row = []
        for h in range(n_head):
            with ablated(p, h, n_head):
                row.append(loss() - base)
        ablation.append(row)
    return _summary(stats, ablation, base)


def _glue_run_info(model_dir: Path) -> dict[str, Any]:
    """Task, variant and seed of the GLUE run a ``--save_model`` folder belongs to (its result.json).

    A folder saved elsewhere (no result.json beside it) has none: it can be diagnosed, not paired.
    """
    from skipxl.config_io import load_json
    from skipxl.glue.runlog import RESULT_FILE

    path = model_dir.parent / RESULT_FILE
    if not path.is_file():
        return {}
    res = load_json(path)
    return {"task": res.get("task"), "variant": res.get("variant"), "seed": res.get("init_seed")}


def glue_main(
    *model_dirs: str,
    task: str | None = None,
    glue_dir: str | None = None,
    split: str = "dev",
    tokenizer: str | None = None,
    limit: int = 256,
    batch_size: int = 32,
    max_length: int = 128,
    out: str | None = None,
    n_boot: int = 10_000,
) -> None:
    """Head diagnostics of fine-tuned Hugging Face model folders (e.g. GLUE ``--save_model``).

    Given the saved models of baseline and cross-head GLUE runs of shared seeds (each
    ``<run>/model`` beside its ``result.json``), also writes the paired comparison to
    ``OUT/heads_compare.{json,md}``, as ``skipxl heads`` does for Transformer-XL runs.

    Args:
        model_dirs: save_pretrained folders of *ForSequenceClassification models.
        task: the GLUE task they were fine-tuned on (default: from each run's result.json).
        glue_dir: the GLUE data folder (default: $SKIPXL_GLUE_DIR or the shared data).
        split: dev (or train).
        tokenizer: tokenizer folder or name (default: model_dir, else 'minilm').
        limit: examples scored (the same first examples for every model).
        batch_size: examples per forward pass.
        max_length: tokens per example (longer pairs are truncated).
        out: folder for heads_compare.{json,md} (default: the common parent of the runs); the
            per-model heads.{json,csv} go into each model folder.
        n_boot: bootstrap resamples of the comparison.
    """
    if not model_dirs:
        raise SkipxlError("give at least one model folder: skipxl glue-heads MODEL_DIR [MODEL_DIR ...]")
    results = []
    for d in model_dirs:
        path = Path(d)
        info = _glue_run_info(path)
        name = task or info.get("task")
        if name is None:
            raise SkipxlError(
                f"{path}: no result.json beside it names the task; pass --task (mrpc, rte, ...)"
            )
        res = _glue_model_heads(path, name, glue_dir, split, tokenizer, limit, batch_size, max_length)
        res.update({k: v for k, v in info.items() if k != "task"})
        _write(path, f"{path.parent.name}/{path.name}", res)
        results.append(res)
    paired = [r for r in results if r.get("variant") and r.get("seed") is not None]
    if {"baseline", "cross_head"} <= {r["variant"] for r in paired}:
        common = Path(os.path.commonpath([Path(d).resolve().parent for d in model_dirs]))
        write_comparison(paired, Path(out) if out else common, n_boot=n_boot)


def _glue_model_heads(
    path: Path,
    task: str,
    glue_dir: str | None,
    split: str,
    tokenizer: str | None,
    limit: int,
    batch_size: int,
    max_length: int,
) -> dict[str, Any]:
    """:func:`glue_head_diagnostics` of one saved model on the first ``limit`` examples of ``split``."""
    from transformers import AutoModelForSequenceClassification

    from skipxl.glue.finetune import collate, encode
    from skipxl.glue.model import load_tokenizer
    from skipxl.glue.tasks import get_task, load_split

    if not (path / "config.json").is_file():
        raise SkipxlError(
            f"{path} is not a Hugging Face model folder (no config.json); pass a save_pretrained folder"
        )
    spec = get_task(task)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), local_files_only=True, attn_implementation="eager"
        )
    except (OSError, ValueError) as exc:
        raise SkipxlError(
            f"could not load {path} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    try:
        tok = load_tokenizer(tokenizer or str(path))
    except SkipxlError:
        if tokenizer is not None:
            raise
        tok = load_tokenizer("minilm")
    data = encode(tok, load_split(spec, split, glue_dir=glue_dir), max_length, limit=limit)
    regression = spec.num_labels == 1
    idx = list(range(len(data)))
    batches = [
        collate(data, idx[i : i + batch_size], tok.pad_token_id, regression)
        for i in range(0, len(idx), batch_size)
    ]
    res = glue_head_diagnostics(model, batches, regression)
    res.update(model_dir=str(path), task=spec.name, split=split, examples=len(data))
    return res
