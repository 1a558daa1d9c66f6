"""Parameter-efficient methods in the GLUE pipeline (skipxl.glue.methods and friends).

Checks: trainable-parameter counts equal the published formula of each method (tiny BERT and
the real MiniLM); the optimizer holds exactly the intended parameters; after real DeepSpeed
training every frozen backbone parameter is bitwise unchanged (and every trained one moved);
the saved method file alone, loaded onto a fresh backbone, reproduces the run's dev logits
exactly; bottleneck adapters start as the identity and sit before the residual + LayerNorm;
the few-shot sample is stratified and seeded; two ZeRO-2 ranks train like one process with
gradient accumulation; the report pools methods but not recipes.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_glue_sweep import make_rte

from skipxl.errors import SkipxlError
from skipxl.glue import finetune as ft
from skipxl.glue.adapters import ADAPTER_ATTR, AdapterConfig, attach_adapters
from skipxl.glue.finetune import FinetuneConfig, build_model, build_optimizer
from skipxl.glue.method_io import METHOD_DIR, evaluate_method_dir
from skipxl.glue.methods import METHOD_NAMES, count_trainable, formula_trainable
from skipxl.glue.sampling import class_quota, stratified_indices

REPO = Path(__file__).resolve().parents[1]
PEFT = [m for m in METHOD_NAMES if m != "full"]


def intended(name: str, method: str) -> bool:
    """The trained set of each method, written out independently of skipxl.glue.methods."""
    head = name.startswith("classifier.")
    ln = "LayerNorm" in name
    return {
        "full": True,
        "spartan": ".spartan_memory." in name or ln or head,
        "adapter_houlsby": ".adapter." in name or ln or head,
        "adapter_pfeiffer": ".adapter." in name or head,
        "lora": "lora_A" in name or "lora_B" in name or head,
    }[method]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_trainable_count_equals_the_formula_and_optimizer_holds_only_it(method: str) -> None:
    cfg = FinetuneConfig(task="rte", model="tiny-random", method=method)
    model = build_model(cfg)
    assert count_trainable(model) == formula_trainable(model.config, method, cfg.method_settings, 2)
    names = {id(p): n for n, p in model.named_parameters()}
    in_optimizer = {names[id(p)] for g in build_optimizer(model, cfg).param_groups for p in g["params"]}
    assert in_optimizer == {n for n in names.values() if intended(n, method)}
    for n, p in model.named_parameters():
        assert p.requires_grad == intended(n, method), n


def test_formulas_by_hand_on_minilm() -> None:
    """MiniLM-L6-H384: L = 6, H = 384, 2 labels; every count written out in numbers."""
    ln = (1 + 2 * 6) * 2 * 384  # embedding LayerNorm + 2 per layer
    head = 384 * 2 + 2
    expected = {
        "spartan": 6 * (16 * 384 + 2 * 48 * 384) + ln + head,  # E H + 2 M H per layer
        "adapter_houlsby": 6 * 2 * (2 * 384 * 24 + 24 + 384) + ln + head,  # m = 384 / 16
        "adapter_pfeiffer": 6 * (2 * 384 * 24 + 24 + 384) + head,
        "lora": 6 * 2 * 8 * (384 + 384) + head,  # r (in + out) for query and value
    }
    for method, n in expected.items():
        model = build_model(FinetuneConfig(task="rte", model="minilm", method=method))
        assert (
            count_trainable(model)
            == n
            == formula_trainable(model.config, method, None or model_settings(method), 2)
        )
    model = build_model(FinetuneConfig(task="rte", model="minilm", method="full"))
    # vocab 30522 + 512 positions + 2 types, 6 layers with FFN 1536, pooler, classifier
    emb = (30522 + 512 + 2) * 384 + 2 * 384
    layer = 4 * (384 * 384 + 384) + 4 * 384 + (384 * 1536 + 1536) + (1536 * 384 + 384)
    assert count_trainable(model) == emb + 6 * layer + (384 * 384 + 384) + head


def model_settings(method: str):
    return FinetuneConfig(method=method).method_settings


def tiny_bert_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


IDS = {"input_ids": torch.randint(1, 60, (2, 5), generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer"])
def test_adapters_start_as_identity_and_sit_before_residual_layernorm(kind: str) -> None:
    stock = tiny_bert_classifier()
    model = copy.deepcopy(stock)
    adapters = attach_adapters(model, AdapterConfig(kind=kind))
    assert len(adapters) == 2 * (2 if kind == "houlsby" else 1)
    assert torch.equal(stock(**IDS).logits, model(**IDS).logits)  # up-projection is zero at init
    # adapter(x) = x + c (zero up weight, bias c): the output module must compute LN(dense(x) + c + input)
    site = model.bert.encoder.layer[0].output
    c = torch.linspace(-1, 1, 16)
    with torch.no_grad():
        getattr(site, ADAPTER_ATTR).up.bias.copy_(c)
    x, res = torch.randn(2, 5, 32), torch.randn(2, 5, 16)
    expected = site.LayerNorm(site.dense(x) + c + res)
    torch.testing.assert_close(site(x, res), expected)
    assert hasattr(model.bert.encoder.layer[0].attention.output, ADAPTER_ATTR) == (kind == "houlsby")


def test_class_quota_and_stratified_sample() -> None:
    assert class_quota([70, 30], 10) == [7, 3]
    assert class_quota([1, 1, 1], 2) == [1, 1, 0]
    assert class_quota([5, 3, 2], 7) == [4, 2, 1]  # 3.5, 2.1, 1.4 -> largest remainders: class 0
    labels = [0] * 680 + [1] * 320
    a = stratified_indices(labels, 200, seed=3, regression=False)
    assert len(a) == len(set(a)) == 200 and a == sorted(a)
    assert Counter(labels[i] for i in a) == {0: 136, 1: 64}
    assert a == stratified_indices(labels, 200, seed=3, regression=False)
    assert a != stratified_indices(labels, 200, seed=4, regression=False)
    assert len(stratified_indices([0.5] * 50, 20, seed=0, regression=True)) == 20
    with pytest.raises(SkipxlError, match="exceeds the 50 training examples"):
        stratified_indices([0] * 50, 51, seed=0, regression=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "prefix"}, "method 'prefix' is unknown"),
        ({"spartan_children": 50}, "multiple of spartan_parents"),
        ({"spartan_version": "dense"}, "spartan_version 'dense'"),
        ({"adapter_reduction": 0}, "adapter_reduction"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"train_samples": 0}, "train_samples"),
    ],
)
def test_bad_method_flags_fail_in_the_config(kwargs: dict, match: str) -> None:
    with pytest.raises(SkipxlError, match=match):
        FinetuneConfig(**kwargs)


@pytest.fixture(scope="module")
def glue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rte(tmp_path_factory.mktemp("glue_methods") / "glue", n_train=48, n_dev=20)


@pytest.mark.slow
@pytest.mark.parametrize("method", PEFT)
def test_training_leaves_the_backbone_bitwise_and_the_saved_file_reproduces_dev(
    method: str, glue: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: dict[str, torch.nn.Module] = {}
    before: dict[str, torch.Tensor] = {}

    def spy(cfg: FinetuneConfig) -> torch.nn.Module:
        model = build_model(cfg)
        built["model"] = model
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return model

    monkeypatch.setattr(ft, "build_model", spy)
    cfg = FinetuneConfig(
        task="rte",
        model="tiny-random",
        method=method,
        lr=1e-2,
        max_steps=3,
        batch_size=8,
        glue_dir=str(glue),
        spartan_aux_loss=0.01,
        train_samples=32,
        sample_seed=7,
    )
    run = tmp_path / "run"
    result = ft.finetune(cfg, run)
    model = built["model"]
    for name, p in model.named_parameters():
        if intended(name, method):
            if (
                ".spartan_memory." in name
                or ".adapter.down" in name
                or "lora_B" in name
                or "classifier" in name
            ):
                assert not torch.equal(p.detach(), before[name]), f"{name} did not train"
        else:
            assert torch.equal(p.detach(), before[name]), f"frozen {name} changed"
    assert result["train_examples"] == 32 and result["sample_seed"] == 7
    assert json.loads((run / "meta.json").read_text())["seeds"]["sample_seed"] == 7
    # the method file alone + a fresh backbone gives the run's dev logits bit for bit
    saved = json.loads((run / "predictions.json").read_text())
    again = evaluate_method_dir(run / METHOD_DIR)
    assert again["logits"] == saved["logits"]
    assert again["metrics"] == result["metrics"]
    cost = result["cost"]
    assert cost["bytes_per_task"] == (run / METHOD_DIR / "weights.safetensors").stat().st_size
    assert cost["trainable_params"] == count_trainable(model) < cost["total_params"]
    assert set(cost["infer"]) == {"1", "32"} and cost["train_tokens_per_s"] > 0
    if method == "spartan":
        usage = json.loads((run / "parents.json").read_text())
        for counts, tokens in zip(usage["counts"], usage["tokens"], strict=True):
            assert sum(counts) == pytest.approx(cfg.spartan_topk * tokens)  # k parents per real token
        assert sum(usage["tokens"]) / usage["layers"] == sum(
            sum(1 for _ in ids) for ids in ft.encode_evals(cfg, ft_tokenizer()).popitem()[1][1].input_ids
        )


def ft_tokenizer():
    from skipxl.glue.model import load_tokenizer

    return load_tokenizer("tiny-random")


def test_corrupt_method_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SkipxlError, match=r"holds no method\.json"):
        evaluate_method_dir(tmp_path)
    (tmp_path / "method.json").write_text(json.dumps({"format": 1, "sha256": "x", "finetune_config": {}}))
    (tmp_path / "weights.safetensors").write_bytes(b"junk")
    with pytest.raises(SkipxlError, match="does not match the sha256"):
        evaluate_method_dir(tmp_path)


WORKER = """
import sys
from pathlib import Path
from skipxl.engine.distributed import ensure_accelerator_env
ensure_accelerator_env()
from skipxl.glue.finetune import FinetuneConfig, finetune
glue, out, ds_config = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
for method in ("spartan", "adapter_houlsby", "lora"):
    cfg = FinetuneConfig(task="rte", model="tiny-random", method=method, dropout=0.0, max_steps=3,
                         batch_size=8, micro_batch=4, glue_dir=glue, log_every=1, lr=1e-2,
                         ds_config=ds_config, spartan_aux_loss=0.01, measure_inference=False)
    finetune(cfg, Path(out) / method)
"""


@pytest.mark.slow
def test_methods_train_alike_on_two_zero2_ranks_and_one_process(glue: Path, tmp_path: Path) -> None:
    """One process accumulates two micro-batches of 4; two ZeRO-2 ranks take one each: same losses."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = Path(sys.executable).parent / "deepspeed"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    commands = {
        1: [sys.executable, str(script), str(glue), str(tmp_path / "w1"), "cpu"],
        2: [str(launcher), "--num_gpus", "2", "--master_port", str(port), str(script), str(glue)],
    }
    commands[2] += [str(tmp_path / "w2"), "cpu_zero2"]
    commands = {
        **commands,
    }
    for cmd in commands.values():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for method in ("spartan", "adapter_houlsby", "lora"):
        losses = {}
        for world in (1, 2):
            run = tmp_path / f"w{world}" / method
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            losses[world] = [x["loss"] for x in lines if x["split"] == "train"]
            meta = json.loads((run / "meta.json").read_text())
            assert (meta["world_size"], meta["grad_accum"]) == ((1, 2) if world == 1 else (2, 1))
        assert json.loads((tmp_path / "w2" / method / "meta.json").read_text())["zero_stage"] == 2
        assert len(losses[1]) == 3 and losses[1][0] != losses[1][2]
        assert losses[2] == pytest.approx(losses[1], rel=1e-5), method


def _fake_run(root: Path, method: str, label: str, seed: int, **cfg_extra) -> None:
    run = root / "rte" / label / f"seed_{seed}"
    run.mkdir(parents=True)
    cfg = {"task": "rte", "variant": "baseline", "method": method, "init_seed": seed, "data_seed": seed}
    (run / "config.json").write_text(json.dumps({**cfg, **cfg_extra}))
    result = {
        "task": "rte",
        "variant": "baseline",
        "method": method,
        "label": label,
        "init_seed": seed,
        "metrics": {"accuracy": 0.5 + 0.01 * seed},
        "cost": {"trainable_params": 10, "total_params": 1000, "bytes_per_task": 40, "train_time_s": 3.0},
    }
    (run / "result.json").write_text(json.dumps(result))


def test_report_pools_methods_with_their_own_recipes_but_not_other_settings(tmp_path: Path) -> None:
    from skipxl.glue.report import glue_report

    for seed in (0, 1):
        _fake_run(tmp_path / "a", "full", "baseline", seed, lr=2e-5, batch_size=32)
        _fake_run(tmp_path / "a", "spartan", "spartan", seed, lr=1e-3, batch_size=16, spartan_topk=4)
    rep = glue_report(tmp_path / "a", plot=False)
    assert {g.variant for g in rep.groups} == {"baseline", "spartan"}
    assert "## Cost per method" in rep.markdown and "| spartan | 2 | 10 | 1.00 | 40 B |" in rep.markdown
    assert rep.csv_path.read_text().splitlines()[0].endswith("infer_b32_ex_per_s,peak_rss_mib")
    _fake_run(tmp_path / "a", "lora", "lora", 0, lr=5e-4, batch_size=16, max_steps=7)
    with pytest.raises(SkipxlError, match=r"different settings \(max_steps: None vs 7\)"):
        glue_report(tmp_path / "a", plot=False)


def test_sweep_plans_methods_with_their_presets_and_labels(tmp_path: Path) -> None:
    from skipxl.glue.sweep import SweepConfig, plan_runs, with_defaults

    cfg = SweepConfig(
        tasks=("rte",),
        methods=("full", "spartan", "lora"),
        variants=("baseline", "cross_head"),
        seeds=(0,),
        out=str(tmp_path),
    )
    runs = plan_runs(cfg)
    got = {(r.label, r.cfg.method, r.cfg.variant, r.cfg.lr, r.cfg.batch_size) for r in runs}
    assert got == {
        ("baseline", "full", "baseline", 2e-5, 32),
        ("cross_head", "full", "cross_head", 2e-5, 32),
        ("spartan", "spartan", "baseline", 1e-3, 16),
        ("spartan+cross_head", "spartan", "cross_head", 1e-3, 16),
        ("lora", "lora", "baseline", 5e-4, 16),
        ("lora+cross_head", "lora", "cross_head", 5e-4, 16),
    }
    assert {r.run_dir.relative_to(tmp_path).parts[1] for r in runs} == {r[0] for r in got}
    fixed = plan_runs(SweepConfig(tasks=("rte",), methods=("spartan",), seeds=(0,), lr=3e-4, batch_size=8))
    assert {(r.cfg.lr, r.cfg.batch_size) for r in fixed} == {(3e-4, 8)}
    # a config written before the method options existed still matches a plain full run
    old = {k: v for k, v in json.loads(json.dumps(ft.to_dict(FinetuneConfig()))).items() if k != "method"}
    assert with_defaults(old) == ft.to_dict(FinetuneConfig())
    with pytest.raises(SkipxlError, match="method 'bitfit' is unknown"):
        SweepConfig(methods=("bitfit",))
