"""Worker for the multi-process engine tests (run by tests/test_engine_distributed.py, not by pytest).

Usage: RANK=.. WORLD_SIZE=.. LOCAL_RANK=.. MASTER_ADDR=.. MASTER_PORT=.. \
       python tests/ds_worker.py OUT_BASE JSON_SPEC

JSON_SPEC: {"runs": [{"name": ..., "ds_config": ..., "micro_batch": b, "grad_accum": a,
            "variant": ..., "steps": n, "dlt": {DLTConfig fields}}, ...], "train_tokens": N}
Each run trains the tiny preset on a small built-in corpus in OUT_BASE/<name>; rank 0 writes
OUT_BASE/<name>.json with the per-step losses, the skip masks seen by every rank and, for the
Dynamic Layer Tying variants, every rank's actions (layer, action, rewards).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("SKIPXL_NO_PROGRESS", "1")


def main() -> None:
    import torch

    from skipxl.data import BuiltinConfig, DataConfig, load_corpus
    from skipxl.engine.config import EvalConfig, RunConfig, TrainConfig
    from skipxl.engine.dlt_config import DLTConfig
    from skipxl.engine.policies import Policies
    from skipxl.engine.train import train
    from skipxl.engine.variants import apply_variant
    from skipxl.model import get_preset

    out_base = Path(sys.argv[1])
    spec = json.loads(sys.argv[2])
    data = DataConfig(
        corpus="builtin",
        builtin=BuiltinConfig(train_tokens=spec.get("train_tokens", 20000), eval_tokens=2000),
    )
    n_token = load_corpus(data).n_token
    # record each step's skip mask as this rank drew it (all ranks must agree)
    masks: list[list[bool]] = []
    original = Policies.plan

    def recording(self, step, plan):  # type: ignore[no-untyped-def]
        plan = original(self, step, plan)
        masks.append(list(plan.skip) if plan.skip is not None else [])
        return plan

    Policies.plan = recording  # type: ignore[method-assign]
    # record each DLT action and the reward it was scored with, as this rank saw them
    from skipxl.engine.dlt import DynamicLayerTyingPolicy

    actions: list[list[float]] = []
    original_act = DynamicLayerTyingPolicy._act

    def recording_act(self, step):  # type: ignore[no-untyped-def]
        original_act(self, step)
        _, layer, action = self.pending
        actions.append([layer, action, self.last.get("dlt/reward", 0.0), self.last.get("dlt/q_loss", 0.0)])

    DynamicLayerTyingPolicy._act = recording_act  # type: ignore[method-assign]
    rank = int(os.environ["RANK"])
    for run in spec["runs"]:
        masks.clear()
        actions.clear()
        model = apply_variant(
            get_preset("tiny", n_token=n_token, dropout=0.0), run.get("variant", "baseline")
        )
        train_cfg = TrainConfig(
            global_batch=run["micro_batch"] * run["grad_accum"] * int(os.environ["WORLD_SIZE"]),
            micro_batch=run["micro_batch"],
            grad_accum=run["grad_accum"],
            max_steps=run["steps"],
            log_interval=1,
            eval_interval=0,
            save_interval=0,
            lr=1e-3,
            ds_config=run["ds_config"],
            dlt=DLTConfig(**run["dlt"]) if "dlt" in run else None,
        )
        cfg = RunConfig(
            model=model,
            data=data,
            train=train_cfg,
            eval=EvalConfig(tgt_len=16, mem_len=16, batch_size=2),
            variant=run.get("variant", "baseline"),
            out_dir=str(out_base / run["name"]),
        )
        result = train(cfg, progress=False)
        gathered = [None] * int(os.environ["WORLD_SIZE"])
        torch.distributed.all_gather_object(gathered, masks)
        gathered_actions = [None] * int(os.environ["WORLD_SIZE"])
        torch.distributed.all_gather_object(gathered_actions, actions)
        if rank == 0:
            (out_base / f"{run['name']}.json").write_text(
                json.dumps(
                    {
                        "losses": result.losses,
                        "masks": gathered,
                        "actions": gathered_actions,
                        "final": {k: v for k, v in result.final.items() if isinstance(v, float)},
                    }
                )
            )


if __name__ == "__main__":
    main()
    from skipxl.engine.distributed import shutdown_multi_rank

    shutdown_multi_rank()
    # Every result is written by now. Skip interpreter teardown: on CPU, DeepSpeed's shared-memory
    # communication op can abort there ("terminate called without an active exception", -6), which
    # occasionally failed this finished worker.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
