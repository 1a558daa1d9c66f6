"""``skipxl probe``: a trained model's loss and accuracy per dependency distance.

The run must have been trained on the long-range probe corpus (``--corpus builtin
--builtin_probe true``, :mod:`skipxl.data.probe`). The split is read with the Transformer-XL
evaluation protocol (parallel streams, segments of ``tgt_len``, memory carried forward, as
:func:`~skipxl.engine.evaluate.evaluate_split`), and at every probe answer the model's
distribution is scored:

* ``loss``: negative log-likelihood of the answer over the whole vocabulary;
* ``loss_values``: the same with the distribution renormalised over the value words (chance is
  exactly ``log(values)``: this isolates "which value" from "a value comes next");
* ``accuracy``: the answer is the argmax over the whole vocabulary.

Several runs give one line per run group in the plot (loss vs distance). With a baseline, the
baseline with ``mem_len`` doubled (the same context bought with memory) and a treatment
(Skip-Retain), the fraction of the doubled-memory gain the treatment recovers per bin is

    recovered = mean_s(L_base - L_treat) / mean_s(L_base - L_doubled)

over the seeds ``s`` the three groups share, with a percentile bootstrap CI over seeds.
"""

from __future__ import annotations

import csv
import dataclasses as dc
import io
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skipxl.errors import SkipxlError

#: The smallest doubled-memory gain (nats per answer) whose recovered fraction is reported.
MIN_GAIN = 0.01

#: (inputs [B, T], targets [B, T'], mems, select [B, T'] bool) -> (log_probs [n_selected, V] fp32, mems)
LogProbFn = Callable[[Tensor, Tensor, Any, Tensor], tuple[Tensor, Any]]


@dataclass(frozen=True)
class ProbeAnswers:
    """The probe answers of one split, in the split's token ids."""

    index: np.ndarray  # [N] position of each answer in the split
    distance: np.ndarray  # [N] answer - source
    answer: np.ndarray  # [N] token id of the answer
    value_ids: np.ndarray  # [V] token ids of the value words


def probe_answers(builtin: Any, split: str, tokens: np.ndarray, vocab: Any) -> ProbeAnswers:
    """Regenerate the probe positions of ``split`` and check them against the loaded tokens."""
    from skipxl.data.probe import probe_records, value_symbols

    if not getattr(builtin, "probe", False):
        raise SkipxlError(
            "this run was not trained on the probe corpus; train with --corpus builtin --builtin_probe true"
        )
    rec = probe_records(builtin, split)
    tokens = np.asarray(tokens)
    if len(rec.answer) == 0 or rec.answer.max() >= len(tokens):
        raise SkipxlError(f"the {split} split holds no probes; raise --builtin_eval_tokens")
    if not np.array_equal(tokens[rec.answer], tokens[rec.source]):
        raise SkipxlError(
            "the cached probe corpus does not match its generator; rebuild it (skipxl data prepare)"
        )
    value_ids = np.array([vocab.lookup[s] for s in value_symbols(builtin.probe_values)], dtype=np.int64)
    return ProbeAnswers(rec.answer, rec.distance, tokens[rec.answer].astype(np.int64), value_ids)


def model_log_probs(model: torch.nn.Module, context: Any) -> LogProbFn:
    """A :data:`LogProbFn` of a TransformerXL: log-probabilities at the selected targets only."""

    def fn(inputs: Tensor, targets: Tensor, mems: Any, select: Tensor) -> tuple[Tensor, Any]:
        out = model(inputs, mems=mems, context=context)
        hidden = out.hidden[:, inputs.size(1) - targets.size(1) :]  # [B, T', D], aligned with targets
        return model.log_prob(hidden[select.to(hidden.device)]).float().cpu(), out.mems  # [n, V]

    return fn


@torch.no_grad()
def score_answers(
    fn: LogProbFn,
    tokens: np.ndarray,
    answers: ProbeAnswers,
    *,
    batch_size: int,
    tgt_len: int,
    ext_len: int = 0,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Per answer: ``nll``, ``nll_values``, ``correct`` (NaN where not reached by ``max_batches``).

    The global position of every target comes from running the same iterator over
    ``arange(N)``: the segments (and the streams' cut) are exactly the evaluation's.
    """
    from skipxl.data import eval_batches

    n = len(answers.index)
    nll, nll_v, correct = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    slot = np.full(len(tokens), -1, dtype=np.int64)
    slot[answers.index] = np.arange(n)  # position -> answer number
    ids = np.arange(len(tokens), dtype=np.int64)
    segs = zip(
        eval_batches(tokens, batch_size, tgt_len, ext_len),
        eval_batches(ids, batch_size, tgt_len, ext_len),
        strict=True,
    )
    values = torch.from_numpy(answers.value_ids)  # [n_values]
    value_slot = torch.zeros(int(max(values.max(), answers.answer.max())) + 1, dtype=torch.long)
    value_slot[values] = torch.arange(len(values))  # token id -> column among the values
    mems = None
    for k, ((inp, tgt), (_, tgt_pos)) in enumerate(segs, start=1):
        which = torch.from_numpy(slot[tgt_pos.numpy()])  # [B, T'] answer number or -1
        select = which >= 0  # [B, T']
        logp, mems = fn(inp.to(device), tgt.to(device), mems, select)  # [n_sel, V]
        if logp.numel():
            j = which[select].numpy()  # [n_sel]
            ans = torch.from_numpy(answers.answer[j])  # [n_sel]
            if not torch.equal(ans, tgt[select]):
                raise SkipxlError("probe positions do not match the evaluation targets (corrupt cache?)")
            nll[j] = -logp.gather(1, ans[:, None])[:, 0].double().numpy()
            restricted = torch.log_softmax(logp[:, values], dim=-1)  # [n_sel, n_values]
            nll_v[j] = -restricted.gather(1, value_slot[ans][:, None])[:, 0].double().numpy()
            correct[j] = (logp.argmax(dim=-1) == ans).double().numpy()
        if max_batches is not None and k >= max_batches:
            break
    return {"nll": nll, "nll_values": nll_v, "correct": correct}


def bin_table(
    scores: dict[str, np.ndarray], distance: np.ndarray, bins: Sequence[int], n_values: int
) -> list[dict[str, Any]]:
    """One row per bin ``[lo, hi)``: answers scored, mean losses, accuracy, and chance."""
    rows = []
    for lo, hi in itertools.pairwise(bins):
        m = (distance >= lo) & (distance < hi) & np.isfinite(scores["nll"])
        n = int(m.sum())
        rows.append(
            {
                "bin_lo": int(lo),
                "bin_hi": int(hi),
                "n": n,
                "loss": float(scores["nll"][m].mean()) if n else math.nan,
                "loss_values": float(scores["nll_values"][m].mean()) if n else math.nan,
                "accuracy": float(scores["correct"][m].mean()) if n else math.nan,
                "chance_loss": math.log(n_values),
                "chance_accuracy": 1.0 / n_values,
            }
        )
    return rows


def recovered_fraction(
    base: np.ndarray,
    treat: np.ndarray,
    doubled: np.ndarray,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    min_gain: float = MIN_GAIN,
) -> tuple[float | None, tuple[float, float] | None]:
    """``mean(base - treat) / mean(base - doubled)`` over paired seeds ``[S]``, with a bootstrap CI.

    None where the doubled memory gains less than ``min_gain`` nats or loses: a fraction of a
    non-positive gain means nothing, and one of a negligible gain is noise over noise (a bin whose
    doubled-memory gain is +0.0001 nats would report any ratio at all). No CI below 2 seeds, nor
    when the doubled memory's gain is below ``min_gain`` in more than ``(1 - ci) / 2`` of the
    resamples (the denominator's sign is not known, so neither is the ratio's).
    """
    base, treat, doubled = (np.asarray(x, dtype=np.float64) for x in (base, treat, doubled))
    gain_t, gain_d = base - treat, base - doubled  # [S]
    if not np.all(np.isfinite(gain_t) & np.isfinite(gain_d)) or gain_d.mean() < min_gain:
        return None, None
    point = float(gain_t.mean() / gain_d.mean())
    if base.size < 2:
        return point, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, base.size, size=(n_boot, base.size))  # [n_boot, S]
    num, den = gain_t[idx].mean(axis=1), gain_d[idx].mean(axis=1)  # [n_boot]
    alpha = (1.0 - ci) / 2.0
    keep = den >= min_gain
    if keep.mean() < 1.0 - alpha:
        return point, None
    ratios = num[keep] / den[keep]
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return point, (float(lo), float(hi))


# ---------------------------------------------------------------------------------- run folders
def probe_run(
    run_dir: str | Path,
    *,
    split: str = "valid",
    overrides: dict[str, Any] | None = None,
    bins: Sequence[int] | None = None,
    max_batches: int | None = None,
    tag: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Score one run folder's checkpoint per distance bin; writes ``probe_<split>.{json,csv}`` there."""
    from skipxl.config_io import load_json
    from skipxl.data import load_corpus
    from skipxl.engine.checkpoint import fp32_state_dict, resolve_tag
    from skipxl.engine.compare import summarize
    from skipxl.engine.config import run_config_from_dict
    from skipxl.engine.evaluate import SPLIT_ALIASES
    from skipxl.engine.run_dir import CHECKPOINTS, CONFIG
    from skipxl.model import TransformerXL

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise SkipxlError(
            f"{run_dir} is not a run folder (no config.json); pass the --out folder of a training run"
        )
    if split not in SPLIT_ALIASES:
        raise SkipxlError(f"unknown --split {split!r}; choose valid or test")
    split = SPLIT_ALIASES[split]
    cfg = run_config_from_dict(load_json(run_dir / CONFIG))
    protocol = dc.replace(cfg.eval, **(overrides or {}))
    corpus = load_corpus(cfg.data)
    tokens = np.asarray(corpus.splits[split])
    answers = probe_answers(cfg.data.builtin, split, tokens, corpus.vocab)
    bins = tuple(cfg.data.builtin.probe_bins if bins is None else bins)
    if len(bins) < 2 or any(a >= b for a, b in itertools.pairwise(bins)):
        raise SkipxlError(f"--bins {bins!r} must be at least two increasing edges")
    ckpt = run_dir / CHECKPOINTS
    requested, tag = tag, resolve_tag(ckpt, tag)
    model = TransformerXL(cfg.model)
    model.load_state_dict(fp32_state_dict(ckpt, tag))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    scores = score_answers(
        model_log_probs(model, protocol.context),
        tokens,
        answers,
        batch_size=protocol.batch_size,
        tgt_len=protocol.tgt_len,
        ext_len=protocol.ext_len,
        max_batches=max_batches,
        device=dev,
    )
    summary = summarize(run_dir)
    result = {
        "run": str(run_dir),
        "checkpoint": tag,
        "split": split,
        "variant": summary["variant"],
        "seed": summary["seed"],
        "train_mem_len": cfg.model.mem_len,
        "protocol": dc.asdict(protocol),
        "params": summary["params"],
        "peak_bytes": summary["peak_bytes"],
        "label": f"{summary['variant']} mem{cfg.model.mem_len}" + ("" if requested is None else f" @{tag}"),
        "bins": bin_table(scores, answers.distance, bins, len(answers.value_ids)),
    }
    (run_dir / f"probe_{split}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (run_dir / f"probe_{split}.csv").write_text(_csv([result]))
    return result


_CSV_FIELDS = ("label", "variant", "seed", "run", "bin_lo", "bin_hi", "n", "loss", "loss_values", "accuracy",
               "chance_loss", "chance_accuracy", "peak_bytes")  # fmt: skip


def _csv(results: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        for row in r["bins"]:
            w.writerow({**r, **row})
    return buf.getvalue()


def _by_label(results: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    groups: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in results:
        groups.setdefault(r["label"], {})[r["seed"]] = r["bins"]
    return groups


def recovery_table(
    results: list[dict[str, Any]],
    baseline: str,
    treatment: str,
    doubled: str,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    min_gain: float = MIN_GAIN,
) -> list[dict[str, Any]]:
    """Per bin: the fraction of ``doubled``'s gain over ``baseline`` that ``treatment`` recovers."""
    groups = _by_label(results)
    for name in (baseline, treatment, doubled):
        if name not in groups:
            raise SkipxlError(f"no runs labelled {name!r}; the runs are labelled {sorted(groups)}")
    seeds = sorted(set(groups[baseline]) & set(groups[treatment]) & set(groups[doubled]))
    if not seeds:
        raise SkipxlError(f"{baseline!r}, {treatment!r} and {doubled!r} share no seed; pair runs by --seed")
    rows = []
    for b, ref in enumerate(groups[baseline][seeds[0]]):
        loss = {
            g: np.array([groups[g][s][b]["loss_values"] for s in seeds])
            for g in (baseline, treatment, doubled)
        }
        point, interval = recovered_fraction(
            loss[baseline], loss[treatment], loss[doubled], n_boot=n_boot, ci=ci, min_gain=min_gain
        )
        rows.append(
            {
                "bin_lo": ref["bin_lo"],
                "bin_hi": ref["bin_hi"],
                "seeds": len(seeds),
                "gain_doubled": float(np.mean(loss[baseline] - loss[doubled])),  # the denominator (nats)
                "recovered": point,
                "ci_low": None if interval is None else interval[0],
                "ci_high": None if interval is None else interval[1],
            }
        )
    return rows


def auto_roles(labels: Sequence[str]) -> tuple[str, str, str] | None:
    """(baseline, treatment, doubled) when the labels hold baselines at mem M and 2M and Skip-Retain at M.

    Labels scored at one checkpoint tag (``"baseline mem16 @step_00003000"``) pair up among
    themselves: a phase-1 checkpoint is compared with the baselines at the same step.
    """
    mems: dict[tuple[str, str], list[int]] = {}  # (variant, " @tag" or "") -> memory lengths
    for label in labels:
        head, at, tag = label.partition(" @")
        variant, _, rest = head.partition(" mem")
        if rest.isdigit():
            mems.setdefault((variant, at + tag), []).append(int(rest))
    for suffix in sorted({s for _, s in mems}):
        base_mems = sorted(mems.get(("baseline", suffix), []))
        for m in base_mems:
            if 2 * m in base_mems and m in mems.get(("skip_retain", suffix), []):
                return (
                    f"baseline mem{m}{suffix}",
                    f"skip_retain mem{m}{suffix}",
                    f"baseline mem{2 * m}{suffix}",
                )
    return None


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Loss over the values vs distance (bin midpoints, log x), one line per label (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    chance = None
    for label, by_seed in sorted(_by_label(results).items()):
        runs = list(by_seed.values())
        mid = [math.sqrt(r["bin_lo"] * r["bin_hi"]) for r in runs[0]]
        loss = np.array([[r["loss_values"] for r in bins_] for bins_ in runs])  # [S, bins]
        ax.plot(
            mid, loss.mean(axis=0), marker="o", label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})"
        )
        chance = runs[0][0]["chance_loss"]
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("distance to the source token (tokens)")
    ax.set_ylabel("probe loss over the values (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(
    *run_dirs: str,
    out: str | None = None,
    split: str = "valid",
    bins: Any = None,
    tgt_len: int | None = None,
    mem_len: int | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    tag: str | None = None,
    device: str | None = None,
    baseline: str | None = None,
    treatment: str | None = None,
    doubled: str | None = None,
    n_boot: int = 2000,
    min_gain: float = MIN_GAIN,
) -> None:
    """Loss/accuracy per distance bin of probe-trained runs; writes probe.{json,csv,png}.

    Args:
        run_dirs: run folders trained with --corpus builtin --builtin_probe true.
        out: folder for the combined files (default: the first run's parent).
        split: valid or test.
        bins: distance bin edges (default: the corpus's probe_bins), e.g. 2,16,64,256.
        tgt_len: evaluation segment length (default: the run's evaluation protocol).
        mem_len: evaluation memory length (default: the run's).
        batch_size: evaluation streams (default: the run's).
        max_batches: score only this many segments per stream.
        tag: checkpoint folder (default: latest), e.g. a phase-1 checkpoint of Skip-Retain.
        device: cpu or cuda.
        baseline: label ("<variant> mem<M>") of the reference of the recovered fraction
            (default: baseline mem M, the smallest memory present).
        treatment: label of the model whose recovery is measured (default: skip_retain mem M).
        doubled: label of the model with the memory doubled (default: baseline mem 2M).
        n_boot: bootstrap resamples over seeds.
        min_gain: the smallest doubled-memory gain (nats) whose recovered fraction is reported;
            below it the bin reads "undefined".
    """
    from skipxl.engine.flags import coerce

    if not run_dirs:
        raise SkipxlError("give at least one run folder: skipxl probe RUN_DIR [RUN_DIR ...]")
    protocol = {"tgt_len": tgt_len, "mem_len": mem_len, "batch_size": batch_size}
    overrides = {k: coerce(k, v, int) for k, v in protocol.items() if v is not None}
    edges = None if bins is None else coerce("bins", bins, tuple[int, ...])
    results = [
        probe_run(
            d,
            split=split,
            overrides=overrides,
            bins=edges,
            max_batches=None if max_batches is None else coerce("max_batches", max_batches, int),
            tag=tag,
            device=device,
        )
        for d in run_dirs
    ]
    out_dir = Path(out) if out is not None else Path(run_dirs[0]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    roles = (baseline, treatment, doubled) if baseline and treatment and doubled else None
    roles = roles or auto_roles([r["label"] for r in results])
    payload: dict[str, Any] = {"runs": results}
    if roles is not None:
        gain_floor = coerce("min_gain", min_gain, float)
        if not gain_floor > 0:
            raise SkipxlError(f"--min_gain must be > 0 nats, got {min_gain!r}; e.g. --min_gain {MIN_GAIN}")
        payload["recovery"] = {"baseline": roles[0], "treatment": roles[1], "doubled": roles[2]}
        payload["recovery"]["min_gain"] = gain_floor
        payload["recovery"]["bins"] = recovery_table(
            results, *roles, n_boot=coerce("n_boot", n_boot, int), min_gain=gain_floor
        )
    (out_dir / "probe.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (out_dir / "probe.csv").write_text(_csv(results))
    png = plot(results, out_dir / "probe.png")
    for r in results:
        cells = ", ".join(
            f"[{b['bin_lo']},{b['bin_hi']}): {b['loss_values']:.3f}/{b['accuracy']:.2f}" for b in r["bins"]
        )
        print(f"{r['label']} seed {r['seed']}: loss_values/accuracy {cells}")
    if "recovery" in payload:
        for b in payload["recovery"]["bins"]:
            span = f"[{b['bin_lo']},{b['bin_hi']})"
            if b["recovered"] is None:
                print(
                    f"recovered {span}: undefined, the doubled memory gains {b['gain_doubled']:+.4f} nats "
                    f"(a fraction needs >= {gain_floor} nats, --min_gain)"
                )
                continue
            ci_text = "no CI" if b["ci_low"] is None else f"CI [{b['ci_low']:.2f}, {b['ci_high']:.2f}]"
            print(
                f"recovered {span}: {b['recovered']:.2f} of a doubled-memory gain of "
                f"{b['gain_doubled']:+.4f} nats, {ci_text}"
            )
    print(f"wrote {out_dir / 'probe.json'}, {out_dir / 'probe.csv'}, {png}")
