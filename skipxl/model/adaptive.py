"""Adaptive input embedding and projected adaptive log-softmax (Transformer-XL).

Baevski & Auli 2019 (adaptive input) and Grave et al. 2017 (adaptive softmax), in the
projected form of the original Transformer-XL code (``AdaptiveEmbedding`` and
``utils/proj_adaptive_softmax.py``). The vocabulary is sorted by frequency and cut by
``cutoffs`` into a head cluster and tail clusters; with ``div_val > 1`` cluster ``i`` has
embedding size ``d_embed // div_val**i`` and a projection to ``d_proj``. Parameter names
(``emb_layers``, ``emb_projs``, ``out_layers``, ``out_projs``, ``cluster_weight``,
``cluster_bias``) are the original's.

Faithful details: the input embedding is scaled by ``sqrt(d_proj)``; with ``div_val == 1``
the output layer is a single ``Linear(d_embed, n_token)`` sliced per cluster; tail
cluster ``i``'s probability is read from head column ``-i`` (so the ``cluster_weight``
rows are used in reverse cluster order); projections are absent when
``d_proj == d_embed`` and ``div_val == 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _cluster_bounds(n_token: int, cutoffs: tuple[int, ...]) -> list[tuple[int, int]]:
    """``[(0, c0), (c0, c1), ..., (c_last, n_token)]``."""
    ends = [0, *cutoffs, n_token]
    return [(ends[i], ends[i + 1]) for i in range(len(ends) - 1)]


class AdaptiveEmbedding(nn.Module):
    """Adaptive input embedding, output ``[..., d_proj]`` scaled by ``sqrt(d_proj)``.

    The per-cluster lookup is dense and masked (every token looks up a clamped id in
    every cluster and keeps only its own cluster's row), so the forward never asks the
    host how many tokens fall in a cluster: no device-to-host sync.
    """

    def __init__(
        self, n_token: int, d_embed: int, d_proj: int, cutoffs: tuple[int, ...], div_val: int = 1
    ) -> None:
        super().__init__()
        self.n_token, self.d_embed, self.d_proj = n_token, d_embed, d_proj
        self.cutoffs = tuple(cutoffs)
        self.div_val = div_val
        self.emb_scale = d_proj**0.5
        self.bounds = _cluster_bounds(n_token, self.cutoffs)
        self.emb_layers = nn.ModuleList()
        self.emb_projs = nn.ParameterList()
        if div_val == 1:
            self.emb_layers.append(nn.Embedding(n_token, d_embed))
            if d_proj != d_embed:
                self.emb_projs.append(nn.Parameter(torch.empty(d_proj, d_embed)))
        else:
            for i, (lo, hi) in enumerate(self.bounds):
                d_emb_i = d_embed // (div_val**i)
                self.emb_layers.append(nn.Embedding(hi - lo, d_emb_i))
                self.emb_projs.append(nn.Parameter(torch.empty(d_proj, d_emb_i)))

    def forward(self, inp: Tensor) -> Tensor:
        """``inp [...]`` int64 -> ``[..., d_proj]``."""
        if self.div_val == 1:
            embed = self.emb_layers[0](inp)  # [..., d_embed]
            if len(self.emb_projs) > 0:
                embed = F.linear(embed, self.emb_projs[0])  # [..., d_proj]
        else:
            embed = None
            for i, (lo, hi) in enumerate(self.bounds):
                in_cluster = (inp >= lo) & (inp < hi)  # [...]
                local = (inp - lo).clamp(0, hi - lo - 1)  # [...] valid id in every cluster
                emb_i = F.linear(self.emb_layers[i](local), self.emb_projs[i])  # [..., d_proj]
                emb_i = torch.where(in_cluster.unsqueeze(-1), emb_i, emb_i.new_zeros(()))  # [..., d_proj]
                embed = emb_i if embed is None else embed + emb_i
        return embed * self.emb_scale


class ProjectedAdaptiveLogSoftmax(nn.Module):
    """Projected adaptive softmax; plain (projected) softmax when there are no cutoffs."""

    def __init__(
        self, n_token: int, d_embed: int, d_proj: int, cutoffs: tuple[int, ...], div_val: int = 1
    ) -> None:
        super().__init__()
        self.n_token, self.d_embed, self.d_proj = n_token, d_embed, d_proj
        self.cutoffs = tuple(cutoffs)
        self.div_val = div_val
        self.bounds = _cluster_bounds(n_token, self.cutoffs)
        self.shortlist_size = self.bounds[0][1]
        self.n_clusters = len(self.cutoffs)
        self.head_size = self.shortlist_size + self.n_clusters
        # Cutoffs as a device tensor for bucketize (non-persistent: not in the state dict).
        self.register_buffer("cutoff_ids", torch.tensor(self.cutoffs, dtype=torch.long), persistent=False)
        if self.n_clusters > 0:
            self.cluster_weight = nn.Parameter(torch.zeros(self.n_clusters, d_embed))
            self.cluster_bias = nn.Parameter(torch.zeros(self.n_clusters))
        self.out_layers = nn.ModuleList()
        self.out_projs = nn.ParameterList()
        if div_val == 1:
            if d_proj != d_embed:
                for _ in self.bounds:
                    self.out_projs.append(nn.Parameter(torch.empty(d_proj, d_embed)))
            self.out_layers.append(nn.Linear(d_embed, n_token))
        else:
            for i, (lo, hi) in enumerate(self.bounds):
                d_emb_i = d_embed // (div_val**i)
                self.out_projs.append(nn.Parameter(torch.empty(d_proj, d_emb_i)))
                self.out_layers.append(nn.Linear(d_emb_i, hi - lo))

    # ------------------------------------------------------------------ pieces
    def _proj(self, i: int) -> Tensor | None:
        return self.out_projs[i] if len(self.out_projs) > 0 else None

    def _clusters(self) -> list[tuple[Tensor, Tensor]]:
        """Every cluster's output weight ``[V_i, d_i]`` and bias ``[V_i]`` (head: + cluster rows).

        With ``div_val == 1`` the single output layer is cut with one ``split`` (its backward
        assembles one full-size gradient; per-cluster slicing would allocate and zero-fill
        a full ``[n_token, d_embed]`` gradient per cluster).
        """
        if self.div_val == 1:
            sizes = [hi - lo for lo, hi in self.bounds]
            weights = list(self.out_layers[0].weight.split(sizes, dim=0))  # [V_i, d_embed] each
            biases = list(self.out_layers[0].bias.split(sizes, dim=0))  # [V_i] each
        else:
            weights = [layer.weight for layer in self.out_layers]
            biases = [layer.bias for layer in self.out_layers]
        return list(zip(weights, biases, strict=True))

    def _head_logit(self, hidden: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Head logits ``[N, S + C]`` fp32: the shortlist, then one column per tail cluster.

        Two GEMMs joined on the logits, not one GEMM over ``cat([weight, cluster_weight])``:
        a concatenated weight is a fresh ``[S + C, d]`` copy that autograd saves for
        backward, and it turns the cluster parameters' gradients into views that pin the
        whole head gradient (measured: +31 MiB each on wt103_base).
        """
        proj = self._proj(0)
        if proj is not None:
            hidden = F.linear(hidden, proj.t())  # [N, d_0]
        logit = F.linear(hidden, weight, bias)  # [N, S]
        if self.n_clusters > 0:
            cluster_logit = F.linear(hidden, self.cluster_weight, self.cluster_bias)  # [N, C]
            logit = torch.cat([logit, cluster_logit], dim=-1)  # [N, S + C]
        return logit.float()

    @staticmethod
    def _logit(hidden: Tensor, weight: Tensor, bias: Tensor, proj: Tensor | None) -> Tensor:
        """``hidden [N, d_proj]`` -> ``[N, V_i]`` fp32 (project down to d_i first)."""
        if proj is not None:
            hidden = F.linear(hidden, proj.t())  # [N, d_i]
        return F.linear(hidden, weight, bias).float()  # [N, V_i]

    # ------------------------------------------------------------------ API
    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-token NLL in token order.

        Args:
            hidden: ``[N, d_proj]``; target: ``[N]`` int64.
        Returns:
            ``[N]`` fp32 negative log-likelihood.

        The one host sync: a tail cluster's rows are picked with ``nonzero`` (its token
        count decides the tail GEMM's shape). This is inherent to the adaptive softmax:
        a dense tail over all tokens would cost ``N x |cluster|`` instead.
        """
        if self.n_clusters == 0:
            logit = self._head_logit(hidden, *self._clusters()[0])  # [N, V]
            return -F.log_softmax(logit, dim=-1).gather(1, target[:, None]).squeeze(1)  # [N]
        clusters = self._clusters()
        head_lp = F.log_softmax(self._head_logit(hidden, *clusters[0]), dim=-1)
        # head_lp: [N, S + C]. A tail token of cluster i reads head column -i (original quirk).
        cluster = torch.bucketize(target, self.cutoff_ids, right=True)  # [N] cluster id
        head_col = torch.where(cluster == 0, target, self.head_size - cluster)  # [N]
        logprob = head_lp.gather(1, head_col[:, None]).squeeze(1)  # [N]
        for i in range(1, len(self.bounds)):
            lo, _ = self.bounds[i]
            idx = (cluster == i).nonzero().squeeze(1)  # [N_i]  (host sync, see docstring)
            if idx.numel() == 0:
                continue
            tail_lp = F.log_softmax(
                self._logit(hidden.index_select(0, idx), *clusters[i], self._proj(i)), dim=-1
            )  # [N_i, V_i]
            local = (target.index_select(0, idx) - lo)[:, None]  # [N_i, 1]
            logprob = logprob.index_add(0, idx, tail_lp.gather(1, local).squeeze(1))  # [N]
        return -logprob

    def log_prob(self, hidden: Tensor) -> Tensor:
        """Full distribution ``[N, n_token]`` fp32 log-probabilities (tests, generation)."""
        clusters = self._clusters()
        head_lp = F.log_softmax(self._head_logit(hidden, *clusters[0]), dim=-1)
        if self.n_clusters == 0:
            return head_lp  # [N, V]
        parts = [head_lp[:, : self.shortlist_size]]  # [N, S]
        for i in range(1, len(self.bounds)):
            tail_lp = F.log_softmax(self._logit(hidden, *clusters[i], self._proj(i)), dim=-1)
            parts.append(head_lp[:, -i, None] + tail_lp)  # [N, V_i]
        return torch.cat(parts, dim=1)  # [N, V]
