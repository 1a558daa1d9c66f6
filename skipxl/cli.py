"""The ``skipxl`` command (python-fire).

::

    skipxl train --recipe wt103 --preset base --variant combined --data_dir ... --out runs/x
    skipxl eval RUN_DIR [--split test] [--tgt_len 64 --mem_len 640 --clamp_len 400 --same_length]
    skipxl compare RUN_DIR [RUN_DIR ...] [--group] [--png curves.png]
    skipxl data prepare --corpus wt103 --data_dir data/wikitext-103
    skipxl export RUN_DIR [--format safetensors|original]
    skipxl import-original MODEL_ORIGINAL.pt --out DIR [--hparams JSON]
    skipxl runs check RUN_DIR         (verify a run folder; exit 1 on damage)
    skipxl memory ...                 (skipxl.profiling)
    skipxl tying RUN_DIR [RUN_DIR ...] [--png tying.png]   (Dynamic Layer Tying heat-map)
    skipxl glue-report SWEEP_DIR      (skipxl.glue)
    skipxl probe RUN_DIR [RUN_DIR ...] | heads RUN_DIR | glue-heads MODEL_DIR | claims DIRS  (analysis)
    skipxl lm-sweep --out runs/wt2_sweep [--variants ...] [--seeds 0-2]   (skipxl.engine.lm_sweep)

Every user mistake is one line ``error: ...`` on stderr and exit status 2; ``--help``
works on every command (also where a command takes free-form config flags).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skipxl.config_io import dumps
from skipxl.errors import ExitStatus, SkipxlError


def _coerce(name: str, value: Any, tp: Any) -> Any:
    from skipxl.engine.flags import coerce

    return coerce(name, value, tp)


def train(
    recipe: str = "builtin",
    preset: str | None = None,
    variant: str | None = None,
    data_dir: str | None = None,
    out: str | None = None,
    ds_config: str | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    corpus: str | None = None,
    pskip: Any = None,
    beta: Any = None,
    resume: bool = False,
    stop_at_step: int | None = None,
    config: str | None = None,
    dry_run: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> None:
    """Train Transformer-XL (or a paper variant) through DeepSpeed and evaluate it.

    Args:
        recipe: wt103 | enwik8 | text8 | wt2 | builtin (the original settings of each).
        preset: model size within the recipe (wt103: base, large, sch, tiny; enwik8/text8: base,
            large, tiny; wt2: small, tiny; builtin: tiny).
        variant: baseline | skip_retain | cross_head | combined (arXiv 2311.08123).
        data_dir: folder with the corpus files (not needed for --corpus builtin).
        out: run folder to create (config.json, metrics.jsonl, tb/, checkpoints/, results.json).
        ds_config: DeepSpeed JSON: a name from ds_configs/ (cpu, zero2_bf16, ...) or a path.
        max_steps: optimizer steps (also the cosine period).
        seed: global seed (dropout stream per rank = seed + 1000 * rank; skip/cross-head draws
            use plan_seed, which defaults to the seed and is the same on every rank).
        micro_batch: streams per rank per micro-step; with grad_accum and the world size it must
            multiply to the global batch (--global_batch).
        grad_accum: micro-steps per optimizer step.
        corpus: builtin to smoke-test any recipe on the embedded corpus.
        pskip: Skip-Retain probability: a number (p of the linear schedule p*l/N) or a per-layer list.
        beta: cross-head mixing probability.
        resume: continue the run in --out from its latest checkpoint (same settings, exact).
        stop_at_step: save a checkpoint and stop at this step (continue later with --resume).
        config: start from a saved config.json (with --out, --seed, --max_steps changes).
        dry_run: print the resolved configuration and exit.
        progress: show the progress bar.
        overrides: any config field: --lr, --warmup_steps, --dropout, --mem_len, --eval_mem_len,
            --eval_same_length, --phase1_steps, --phase1_fraction, --phase1_patience, ...
    """
    from skipxl.engine.recipe import run

    flags = dict(
        preset=preset,
        variant=variant,
        data_dir=data_dir,
        out=out,
        ds_config=ds_config,
        max_steps=max_steps,
        seed=seed,
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        corpus=corpus,
        pskip=pskip,
        beta=beta,
        **overrides,
    )
    flags = {k: v for k, v in flags.items() if v is not None}  # unset: the recipe's (or --config's) value
    result = run(
        _coerce("recipe", recipe, str),
        resume=resume,
        stop_at_step=stop_at_step,
        progress=progress,
        dry_run=dry_run,
        config=config,
        **flags,
    )
    if dry_run or result is None or not hasattr(result, "finished"):
        return
    if os.environ.get("RANK", "0") != "0":
        if result.interrupted_by in ("SIGTERM", "SIGINT"):  # every rank exits alike
            raise ExitStatus(128 + int(getattr(signal, result.interrupted_by)))
        return
    if result.finished:
        print(
            dumps(
                {
                    "run_dir": str(result.run_dir),
                    "step": result.step,
                    **{k: v for k, v in result.final.items() if isinstance(v, (int, float))},
                },
                sort_keys=True,
            )
        )
        return
    # the training loop printed "stopped at step N (...); resume with --resume --out RUN_DIR" once
    if result.interrupted_by in ("SIGTERM", "SIGINT"):
        raise ExitStatus(128 + int(getattr(signal, result.interrupted_by)))


def eval_(
    run_dir: str,
    split: str = "test",
    tgt_len: int | None = None,
    mem_len: int | None = None,
    clamp_len: int | None = None,
    same_length: bool | None = None,
    ext_len: int | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    tag: str | None = None,
    device: str | None = None,
    dry_run: bool = False,
) -> None:
    """Evaluate a run's latest checkpoint with the Transformer-XL protocol; print and save the metrics.

    Args:
        run_dir: a training run folder.
        split: valid or test.
        tgt_len: segment length (default: the run's eval config).
        mem_len: memory length (longer = more context).
        clamp_len: clamp relative distances beyond this (-1 = off).
        same_length: every query attends to the same number of keys.
        ext_len: extended context (normally 0).
        batch_size: parallel evaluation streams.
        max_batches: score only this many segments per stream (quick look).
        tag: checkpoint folder name (default: latest).
        device: cpu or cuda (default: cuda when available).
        dry_run: print the protocol and checkpoint that would be scored; score nothing.
    """
    from skipxl.engine.distributed import ensure_accelerator_env
    from skipxl.engine.evaluate import evaluate_run

    ensure_accelerator_env()  # DeepSpeed's checkpoint reader may be imported

    overrides = {}
    for name, value, tp in (
        ("tgt_len", tgt_len, int),
        ("mem_len", mem_len, int),
        ("clamp_len", clamp_len, int),
        ("same_length", same_length, bool),
        ("ext_len", ext_len, int),
        ("batch_size", batch_size, int),
    ):
        if value is not None:
            overrides[name] = _coerce(name, value, tp)
    if _coerce("dry_run", dry_run, bool):
        print(
            dumps(
                _eval_plan(_coerce("run_dir", run_dir, str), split, overrides, tag), indent=2, sort_keys=True
            )
        )
        return
    row = evaluate_run(
        _coerce("run_dir", run_dir, str),
        split=_coerce("split", split, str),
        overrides=overrides,
        max_batches=_coerce("max_batches", max_batches, int | None),
        tag=_coerce("tag", tag, str | None),
        device=_coerce("device", device, str | None),
    )
    print(dumps(row, indent=2, sort_keys=True))


def _eval_plan(run_dir: str, split: str, overrides: dict[str, Any], tag: Any) -> dict[str, Any]:
    """The protocol and checkpoint ``skipxl eval`` would use (its ``--dry_run``)."""
    import dataclasses

    from skipxl.config_io import load_json
    from skipxl.engine.checkpoint import resolve_tag
    from skipxl.engine.config import run_config_from_dict
    from skipxl.engine.evaluate import SPLIT_ALIASES

    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise SkipxlError(
            f"{path} is not a run folder (no config.json); pass the --out folder of a training run"
        )
    if split not in SPLIT_ALIASES:
        raise SkipxlError(f"unknown --split {split!r}; choose valid or test (or train)")
    cfg = run_config_from_dict(load_json(path / "config.json"))
    protocol = dataclasses.replace(cfg.eval, **overrides)  # validated (EvalConfig) before any work
    return {
        "run": str(path),
        "split": SPLIT_ALIASES[split],
        "protocol": dataclasses.asdict(protocol),
        "checkpoint": resolve_tag(path / "checkpoints", _coerce("tag", tag, str | None)),
    }


def compare(*run_dirs: str, png: str | None = None, group: bool = False) -> None:
    """Markdown table (variant, params, in-training best val, final val/test, tokens/s, memory) + PNG + CSV.

    Args:
        run_dirs: run folders, or folders that contain run folders.
        png: where to write the plot (default: <parent of the first run>/compare.png, or
            compare_group.png with --group); the CSV goes beside it.
        group: average runs that differ only in the seed (mean ± std, bands in the plot).
    """
    from skipxl.engine.compare import compare as _compare

    print(
        _compare(
            [_coerce("run_dir", d, str) for d in run_dirs],
            png=_coerce("png", png, str | None),
            group=_coerce("group", group, bool),
        )
    )


def tying(*run_dirs: str, png: str | None = None) -> None:
    """Heat-map PNG of the Dynamic Layer Tying state (layer x step) of DLT runs.

    Args:
        run_dirs: finished ``--variant dlt`` run folders (one panel each).
        png: output file (default: <first run>/tying.png).
    """
    from skipxl.engine.dlt_plot import plot_tying

    print(plot_tying([_coerce("run_dir", d, str) for d in run_dirs], png=_coerce("png", png, str | None)))


def data_prepare(
    corpus: str = "builtin",
    data_dir: str | None = None,
    source: str = "local",
    rebuild: bool = False,
    dry_run: bool = False,
    **options: Any,
) -> None:
    """Encode a corpus once and cache it (later loads are memory-mapped).

    Args:
        corpus: builtin | wt103 | wt2 | enwik8 | text8 | txt.
        data_dir: folder holding the corpus files.
        source: local (files in data_dir) or hub (WikiText from the Hugging Face hub; needs network).
        rebuild: re-encode even when the cache is valid.
        dry_run: check the files and print the resolved config and cache entry; encode nothing.
        options: other DataConfig fields (vocab, spm_model, char_convention, cache_dir, ...).
    """
    from skipxl.config_io import from_dict
    from skipxl.data import DataConfig, prepare
    from skipxl.data.corpus import plan

    fields = {
        "corpus": _coerce("corpus", corpus, str),
        "data_dir": _coerce("data_dir", data_dir, str | None),
        "source": _coerce("source", source, str),
        **options,
    }
    cfg = from_dict(DataConfig, fields)
    if _coerce("dry_run", dry_run, bool):
        print(dumps(plan(cfg), indent=2, sort_keys=True, default=str))
        return
    summary = prepare(cfg, rebuild=_coerce("rebuild", rebuild, bool))
    print(dumps(summary, indent=2, sort_keys=True, default=str))


def export(
    run_dir: str,
    tag: str | None = None,
    out: str | None = None,
    format: str = "safetensors",
    vocab: bool = True,
) -> None:
    """Write an inference export (weights, config.json, vocab.json), usable without DeepSpeed.

    Args:
        run_dir: a training run folder.
        tag: checkpoint folder name (default: latest).
        out: destination folder (default: RUN_DIR/export).
        format: safetensors (model.safetensors; skipxl.engine.checkpoint.load_exported reads it) or
            original (model_original.pt: the original Transformer-XL MemTransformerLM state dict and
            constructor arguments; skipxl import-original reads it back).
        vocab: also write the run's vocabulary as vocab.json (needs the run's corpus).
    """
    from skipxl.engine.checkpoint import export as _export
    from skipxl.engine.distributed import ensure_accelerator_env

    ensure_accelerator_env()

    path = _export(
        Path(_coerce("run_dir", run_dir, str)),
        tag=_coerce("tag", tag, str | None),
        out=None if out is None else Path(_coerce("out", out, str)),
        format=_coerce("format", format, str),
        vocab=_coerce("vocab", vocab, bool),
    )
    print(str(path))


def import_original(path: str, out: str, hparams: Any = None) -> None:
    """Turn an original Transformer-XL state dict into a skipxl export folder (model.safetensors + config).

    Args:
        path: a file of `skipxl export --format original` or a bare MemTransformerLM state dict.
        out: the export folder to write (load it with skipxl.engine.checkpoint.load_exported).
        hparams: the original constructor's arguments as JSON (needed for a bare state dict).
    """
    from skipxl.engine.checkpoint import import_original as _import

    params = hparams
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            raise SkipxlError(
                f"--hparams is not JSON ({exc}); pass e.g. '{{\"n_token\": 10000, ...}}'"
            ) from None
    if params is not None and not isinstance(params, dict):
        raise SkipxlError("--hparams must be a JSON object of the original constructor's arguments")
    print(str(_import(Path(_coerce("path", path, str)), Path(_coerce("out", out, str)), hparams=params)))


def runs_check(run_dir: str) -> None:
    """Verify a run folder without changing it: config, meta, metrics and every checkpoint's
    SHA-256 manifest. Prints one line per item; exits 1 when something is damaged.

    Args:
        run_dir: a training run folder.
    """
    from skipxl.engine.run_check import check_run

    report = check_run(Path(_coerce("run_dir", run_dir, str)))
    print("\n".join(report.lines()))
    if not report.ok:
        raise ExitStatus(1)


def _lazy(module: str, attr: str, what: str) -> Any:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise SkipxlError(
                f"`skipxl {what}` needs {module}, which is not installed in this checkout"
            ) from None
        raise
    return getattr(mod, attr)


_MEMORY_SUMMARY = "Memory accounting of the Transformer-XL variants against the baseline (gate, tables)."
_GLUE_SUMMARY = "Report of a BERT + cross-head GLUE seed sweep: mean ± std, std reduction with bootstrap CI."
_ANALYSIS_COMMANDS: dict[str, tuple[str, str, str]] = {
    "probe": (
        "skipxl.analysis.probe",
        "main",
        "Long-range probe: loss/accuracy per dependency distance bin.",
    ),
    "heads": ("skipxl.analysis.heads", "main", "Head diagnostics: attention/output similarity, ablation."),
    "glue-heads": ("skipxl.analysis.heads", "glue_main", "Head diagnostics of a fine-tuned HF model."),
    "claims": ("skipxl.analysis.claims", "main", "The paper's claims, answered: docs/results/claims.md."),
    "lm-sweep": ("skipxl.engine.lm_sweep", "main", "Resumable sweep of LM variants x seeds."),
}
#: Commands whose module is imported only when they run: name -> (module, function, summary).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "memory": ("skipxl.engine.memory", "memory", _MEMORY_SUMMARY),
    "glue-report": ("skipxl.glue.report", "main", _GLUE_SUMMARY),
    "glue_report": ("skipxl.glue.report", "main", _GLUE_SUMMARY),
    **_ANALYSIS_COMMANDS,
}


def _lazy_command(what: str) -> Any:
    """A ``*args, **kwargs`` stand-in for a lazy command that binds its flags before calling it.

    fire hands every ``--flag`` of such a stand-in through, so without the check a typo would
    surface as a ``TypeError`` traceback from deep inside the command.
    """
    module, attr, summary = LAZY_COMMANDS[what]

    def command(*args: Any, **kwargs: Any) -> Any:
        import inspect

        fn = _lazy(module, attr, what)
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise SkipxlError(f"`skipxl {what}`: {exc}; see `skipxl {what} --help` for its options") from None
        return fn(*args, **kwargs)

    command.__name__ = what.replace("-", "_")
    command.__doc__ = summary
    return command


COMMANDS: dict[str, Any] = {
    "train": train,
    "eval": eval_,
    "compare": compare,
    "tying": tying,
    "data": {"prepare": data_prepare},
    "export": export,
    "import-original": import_original,
    "import_original": import_original,
    "runs": {"check": runs_check},
    **{name: _lazy_command(name) for name in LAZY_COMMANDS},
}


def _asks_for_help(argv: list[str]) -> bool:
    return any(a in ("--help", "-h") for a in argv) and "--" not in argv


def _help_argv(argv: list[str]) -> list[str]:
    """Route ``--help``/``-h`` to fire's help even for commands that accept free-form flags."""
    if _asks_for_help(argv):
        # keep only the command words: fire would otherwise *run* the command with the other flags
        # and then describe its result
        words = []
        for a in argv:
            if a.startswith("-") or a not in _command_words():
                break
            words.append(a)
        return [*words, "--", "--help"]
    return argv


def _command_words() -> set[str]:
    words = set()
    for key, value in COMMANDS.items():
        words.add(key)
        if isinstance(value, dict):
            words.update(value)
    return words


def check_flags(fn: Any, argv: Sequence[str], what: str) -> None:
    """Refuse a ``--flag`` that ``fn`` does not take, before fire calls it.

    fire calls a function with the flags it can bind and only *then* complains about the
    rest ("Could not consume arg"), after the work is done; a function that takes
    ``**kwargs`` checks its own flags (see :mod:`skipxl.engine.flags`).
    """
    import inspect

    from skipxl.engine.flags import unknown_flag

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = set(params)
    for arg in argv:
        if arg == "--":
            break
        if not arg.startswith("--") or arg in ("--help",):
            continue
        name = arg[2:].partition("=")[0].replace("-", "_")
        if name not in names and not (name.startswith("no") and name[2:] in names):
            raise unknown_flag(name, names, what)


def fire_command(component: Any, argv: Sequence[str], name: str) -> None:
    """``fire.Fire`` with fire's own errors as one ``error: ...`` line (not ``ERROR:`` + usage)."""
    from unittest import mock

    import fire

    def display_error(trace: Any) -> None:
        print(f"error: {trace.elements[-1].ErrorAsStr()}; see `{name} --help`", file=sys.stderr)

    with mock.patch.object(fire.core, "_DisplayError", display_error):
        fire.Fire(component, command=list(argv), name=name)


def _target(argv: list[str]) -> tuple[Any, list[str], str]:
    """The function ``argv`` runs, the arguments it gets and its command name."""
    node: Any = COMMANDS
    words = []
    while isinstance(node, dict) and argv and argv[0] in node:
        words.append(argv[0])
        node = node[argv.pop(0)]
    return node, argv, " ".join(words)


def main(argv: Sequence[str] | None = None, *, name: str = "skipxl") -> int:
    """Entry point of the console script; returns the exit status."""
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = dict(COMMANDS)
    try:
        if argv and argv[0] == "train" and _asks_for_help(argv):
            from skipxl.engine.recipe import train_help

            script = name != "skipxl"
            prog = name if script else f"{name} train"
            print(train_help(prog, recipe=_recipe_of(argv), script=script))
            return 0
        if argv and argv[0] in LAZY_COMMANDS and _asks_for_help(argv):
            module, attr, _ = LAZY_COMMANDS[argv[0]]
            commands[argv[0]] = _lazy(module, attr, argv[0])  # describe the real signature
        fn, rest, words = _target(list(argv))
        if callable(fn) and not _asks_for_help(argv):
            check_flags(fn, rest, f"`{name} {words}`".replace(" `", "`"))
        fire_command(commands, _help_argv(argv), name)
    except SkipxlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except fire.core.FireExit as exc:
        return int(exc.code or 0)
    except ExitStatus as exc:
        return _leave(exc.code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return _leave(0)


def _leave(code: int) -> int:
    """Every rank of a multi-rank job leaves alike: barrier, destroy the process group, then exit
    at once with ``code``; interpreter teardown on CPU can abort in DeepSpeed's shared-memory comm op
    ("terminate called without an active exception", -6) and would replace the status."""
    import torch

    from skipxl.engine.distributed import is_distributed, shutdown_multi_rank

    multi = is_distributed() and torch.distributed.get_world_size() > 1
    shutdown_multi_rank()
    if multi:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def recipe_main(recipe: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``recipes/<recipe>.py``: ``skipxl train --recipe <recipe>`` with the script's flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        print(f"error: recipes take only --flags (got {argv[0]!r}); see --help", file=sys.stderr)
        return 2
    if any(a == "--recipe" or a.startswith("--recipe=") for a in argv):
        print(
            f"error: recipes/{recipe}.py is the {recipe} recipe; drop --recipe "
            "(or run `skipxl train --recipe NAME` for another one)",
            file=sys.stderr,
        )
        return 2
    return main(["train", f"--recipe={recipe}", *argv], name=Path(sys.argv[0]).name)


def _recipe_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--recipe="):
            return a.partition("=")[2]
        if a == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
    return None


if __name__ == "__main__":
    raise SystemExit(main())
