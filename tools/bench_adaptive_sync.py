#!/usr/bin/env python
"""What the adaptive softmax's host sync costs: ``nonzero`` per tail cluster, measured.

:class:`~skipxl.model.adaptive.ProjectedAdaptiveLogSoftmax` picks each tail cluster's tokens
with ``(cluster == i).nonzero()``: the host must learn ``N_i`` to size the tail GEMM, so it
waits for the device to finish everything queued before (a device-to-host sync, one per tail
cluster and step). A sync-free formulation with the same numbers does not exist at the same
cost: a fixed capacity must be ``N`` (any smaller one can overflow), i.e. the dense tail,
``N x |V_i|`` logits instead of ``N_i x |V_i|`` (for WikiText-103's vocabulary about 13x the
softmax FLOPs).

So we measure the sync's cost directly, side by side and interleaved:

* ``with_sync``: the module's forward + backward as it is (indices found on the device, the
  host waits for them);
* ``indices_given``: the same computation with the tail indices computed *before* the timed
  region (so no wait inside it): exactly the numbers of ``with_sync`` (checked bitwise);
* the difference is what the sync costs per step; the script also times one whole training
  step of the model to put it in proportion.

    python tools/bench_adaptive_sync.py                       # CPU, wt103 vocabulary
    python tools/bench_adaptive_sync.py --device cuda --tokens 6144 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def forward_with_indices(crit, hidden, target, tail_idx):
    """The module's forward with each tail cluster's token indices given (no ``nonzero``)."""
    import torch
    import torch.nn.functional as F

    clusters = crit._clusters()
    head_lp = F.log_softmax(crit._head_logit(hidden, *clusters[0]), dim=-1)  # [N, S + C]
    cluster = torch.bucketize(target, crit.cutoff_ids, right=True)  # [N]
    head_col = torch.where(cluster == 0, target, crit.head_size - cluster)  # [N]
    logprob = head_lp.gather(1, head_col[:, None]).squeeze(1)  # [N]
    for i in range(1, len(crit.bounds)):
        lo, _ = crit.bounds[i]
        idx = tail_idx[i - 1]  # [N_i]
        if idx.numel() == 0:
            continue
        tail_lp = F.log_softmax(crit._logit(hidden.index_select(0, idx), *clusters[i], crit._proj(i)), dim=-1)
        local = (target.index_select(0, idx) - lo)[:, None]  # [N_i, 1]
        logprob = logprob.index_add(0, idx, tail_lp.gather(1, local).squeeze(1))  # [N]
    return -logprob


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=300, help="scored tokens per step (batch x tgt_len)")
    parser.add_argument("--d-model", dest="d_model", type=int, default=410)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    from skipxl.model.adaptive import ProjectedAdaptiveLogSoftmax

    sys.path.insert(0, str(REPO / "tools"))
    from bench_fast import zipf_tokens

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_token, cutoffs = 267_735, (20000, 40000, 200000)
    torch.manual_seed(0)
    crit = ProjectedAdaptiveLogSoftmax(n_token, args.d_model, args.d_model, cutoffs).to(device)
    for p in crit.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    target = torch.from_numpy(zipf_tokens(n_token, args.tokens)).to(device)
    hidden = torch.randn(args.tokens, args.d_model, device=device, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(given: bool) -> tuple[float, torch.Tensor]:
        cluster = torch.bucketize(target, crit.cutoff_ids, right=True)
        tail_idx = [(cluster == i).nonzero().squeeze(1) for i in range(1, len(cutoffs) + 1)]
        sync()
        start = time.perf_counter()
        with autocast:
            nll = forward_with_indices(crit, hidden, target, tail_idx) if given else crit(hidden, target)
        nll.mean().backward()
        sync()
        seconds = time.perf_counter() - start
        hidden.grad = None
        crit.zero_grad(set_to_none=True)
        return seconds, nll.detach()

    run(False), run(True)  # warm-up
    _, a = run(False)
    _, b = run(True)
    assert torch.equal(a, b), "the indices-given forward must compute the module's numbers exactly"
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):  # interleaved
        for given in (False, True):
            times[given].append(run(given)[0])
    with_sync, given = statistics.median(times[False]), statistics.median(times[True])
    counts = torch.bincount(torch.bucketize(target, crit.cutoff_ids, right=True), minlength=4).tolist()
    print(f"device={device} tokens={args.tokens} d_model={args.d_model} dtype={args.dtype} clusters={counts}")
    print(
        f"adaptive softmax fwd+bwd, with the host sync : {1e3 * with_sync:8.3f} ms (median of {args.repeats})"
    )
    print(f"adaptive softmax fwd+bwd, indices given      : {1e3 * given:8.3f} ms")
    print(f"cost of the {len(cutoffs)} syncs per step             : {1e3 * (with_sync - given):8.3f} ms")


if __name__ == "__main__":
    main()
