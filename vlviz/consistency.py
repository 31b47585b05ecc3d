"""Sample-wise affinity consistency between the image side and the text side of N pairs.

SaCo (Wu et al., CVPR 2024) names the *affinity inconsistency problem*: two images that look
alike should be as similar as the captions that describe them. With L2-normalised global
embeddings I (N, D) and T (N, D):

    A_I = I I^T,  A_T = T T^T  (cosine, (N, N)),  inconsistency = |A_I - A_T|.

The paper's exact distance, whether its affinities are softmaxed and how it treats the diagonal
are not public. vlviz exposes the options below with the defaults of ../shared/SEEDS.md: raw
cosine affinities, the diagonal (always 1 = 1) excluded, the mean absolute difference as the main
figure, and a symmetric KL between row-softmaxes at a temperature as an alternative.

Two paths give the same figures:
  - dense (`consistency_figures` and friends): full (N, N) matrices, for the few hundred pairs a
    heatmap can show;
  - chunked (`consistency_summary`): blocks of rows, memory O(chunk * N + k), never an (N, N)
    matrix, for thousands to 100k pairs. Every figure is exact except Spearman, which needs ranks
    over all N(N-1)/2 values: it is exact while they number at most `spearman_pairs`, and beyond
    that is computed on a seeded uniform random sample of that many pairs (said in the result).

Shapes: N pairs, D embedding width, C rows of a chunk, K pairs asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from vlviz.affinity import affinity

DEFAULT_TEMPERATURE = 0.1  # vlviz's choice for the KL option; the paper gives none
SPEARMAN_PAIRS = 500_000  # exact Spearman up to N = 1000 pairs, sampled beyond
CHUNK_ELEMENTS = 2**23  # entries of one (C, N) block: 32 MB in float32
_PAIR_BATCH = 8192  # pairs whose dot products are taken at once when sampling


# ------------------------------------------------------------------------------------------ dense


def in_modal_affinities(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A_I = I I^T and A_T = T T^T of L2-normalised features, each (N, N)."""
    _check_pairs(image_features, text_features)
    return affinity(image_features, image_features), affinity(text_features, text_features)


def inconsistency_matrix(
    image_features: torch.Tensor, text_features: torch.Tensor, signed: bool = False
) -> torch.Tensor:
    """|A_I - A_T| (or A_I - A_T when `signed`: > 0 where the images agree more than the captions), (N, N)."""
    image_image, text_text = in_modal_affinities(image_features, text_features)
    difference = image_image - text_text
    return difference if signed else difference.abs()


def off_diagonal(block: torch.Tensor, row_offset: int = 0) -> torch.Tensor:
    """Rows of a (C, N) block of an (N, N) matrix without their diagonal entry, (C, N - 1).

    Row r of the block is row `row_offset + r` of the matrix, so its diagonal entry sits in column
    `row_offset + r`. Differentiable (a boolean-mask gather).
    """
    rows, n = block.shape
    columns = torch.arange(n, device=block.device)
    own = torch.arange(row_offset, row_offset + rows, device=block.device)
    return block[columns[None, :] != own[:, None]].view(rows, n - 1)


def sample_inconsistency(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Per-sample inconsistency s_i = mean over j != i of |A_I[i, j] - A_T[i, j]|, (N,)."""
    _check_pairs(image_features, text_features, minimum=2)
    return off_diagonal(inconsistency_matrix(image_features, text_features)).mean(dim=1)


def row_symmetric_kl(image_rows: torch.Tensor, text_rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric KL between row-softmaxes of off-diagonal affinity rows, one value per row, (C,).

    With p_i = softmax_j(A_I[i, j] / tau) and q_i = softmax_j(A_T[i, j] / tau) over j != i (the
    inputs are already (C, N - 1) off-diagonal rows):
    J_i = KL(p_i || q_i) + KL(q_i || p_i) = sum_j (p_ij - q_ij) (log p_ij - log q_ij).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = torch.log_softmax(image_rows / temperature, dim=1)
    log_q = torch.log_softmax(text_rows / temperature, dim=1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=1)


def pearson_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's r = cov(x, y) / (std(x) std(y)) of two 1-D tensors; NaN when either is constant."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denominator) if denominator > 0 else math.nan


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..M of a 1-D tensor, ties sharing the mean of their ranks (as scipy's rankdata)."""
    ordered, order = values.sort()
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of each tie group's last member
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    ranks[order] = (last - (counts - 1) / 2)[group]
    return ranks


def spearman_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rho: Pearson's r of the average ranks of x and of y."""
    return pearson_correlation(average_ranks(x), average_ranks(y))


@dataclass(frozen=True)
class ConsistencyFigures:
    """Global SaCo figures of N pairs, over the N(N-1) pairs i != j."""

    pairs: int  # N
    mean_abs_inconsistency: float  # mean |A_I - A_T| over i != j
    pearson: float  # r between off-diagonal A_I and A_T entries
    spearman: float  # rho between them (see `spearman_pairs`)
    symmetric_kl: float  # mean over rows of J_i at `temperature`
    temperature: float
    spearman_pairs: int  # off-diagonal pairs the Spearman used
    spearman_exact: bool  # False: computed on a seeded random sample of pairs

    def to_dict(self) -> dict[str, float | int | bool | None]:
        """Plain values for JSON; NaN (undefined, e.g. for 2 pairs) becomes None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def consistency_figures(
    image_features: torch.Tensor, text_features: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> ConsistencyFigures:
    """Every global figure from the full (N, N) matrices; exact, for N up to a few thousand."""
    _check_pairs(image_features, text_features, minimum=2)
    image_image, text_text = in_modal_affinities(image_features, text_features)
    n = image_image.shape[0]
    first, second = torch.triu_indices(n, n, offset=1, device=image_image.device)
    x, y = image_image[first, second], text_text[first, second]  # (N(N-1)/2,) each pair once
    kl = row_symmetric_kl(off_diagonal(image_image), off_diagonal(text_text), temperature)
    return ConsistencyFigures(
        pairs=n,
        mean_abs_inconsistency=float((x - y).abs().mean()),
        pearson=pearson_correlation(x, y),
        spearman=spearman_correlation(x, y),
        symmetric_kl=float(kl.mean()),
        temperature=temperature,
        spearman_pairs=x.numel(),
        spearman_exact=True,
    )


def cluster_order(image_image: torch.Tensor, text_text: torch.Tensor) -> torch.Tensor:
    """A row order that puts similar samples together, for heatmaps: (N,) long.

    Average-linkage hierarchical clustering (scipy) on the distance 1 - (A_I + A_T) / 2, leaves
    in dendrogram order; both modalities vote so one ordering serves A_I, A_T and |A_I - A_T|.
    Runs on the CPU: it is for the few hundred samples a heatmap can show.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    n = image_image.shape[0]
    if n < 3:
        return torch.arange(n)
    distance = (1 - (image_image + text_text).double().cpu() / 2).clamp_min(0).fill_diagonal_(0)
    distance = (distance + distance.T) / 2  # exact symmetry for squareform
    tree = linkage(squareform(distance.numpy(), checks=False), method="average")
    return torch.from_numpy(leaves_list(tree)).long()


# ---------------------------------------------------------------------------------------- chunked


@dataclass(frozen=True)
class InconsistentPairs:
    """The K most inconsistent pairs i < j, most inconsistent first."""

    first: torch.Tensor  # (K,) long, index i
    second: torch.Tensor  # (K,) long, index j > i
    image_affinity: torch.Tensor  # (K,) A_I[i, j]
    text_affinity: torch.Tensor  # (K,) A_T[i, j]

    @property
    def inconsistency(self) -> torch.Tensor:
        """|A_I - A_T| of each pair, (K,)."""
        return (self.image_affinity - self.text_affinity).abs()


@dataclass(frozen=True)
class ConsistencySummary:
    """What the chunked pass returns: global figures, per-sample scores, the top-K pairs."""

    figures: ConsistencyFigures
    sample_inconsistency: torch.Tensor  # (N,)
    top_pairs: InconsistentPairs


class _Moments:
    """Running off-diagonal count, means, centred sums of squares and co-moment, in float64.

    Blocks are merged with Chan et al.'s pairwise update, so Pearson's r stays accurate over
    billions of entries with a mean far from zero.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean_x = self.mean_y = self.m2_x = self.m2_y = self.c_xy = 0.0

    def merge(self, count: int, mean_x: float, mean_y: float, m2_x: float, m2_y: float, c_xy: float) -> None:
        total = self.count + count
        dx, dy, weight = mean_x - self.mean_x, mean_y - self.mean_y, self.count * count / total
        self.m2_x += m2_x + dx * dx * weight
        self.m2_y += m2_y + dy * dy * weight
        self.c_xy += c_xy + dx * dy * weight
        self.mean_x += dx * count / total
        self.mean_y += dy * count / total
        self.count = total

    @property
    def pearson(self) -> float:
        denominator = math.sqrt(self.m2_x * self.m2_y)
        return self.c_xy / denominator if denominator > 0 else math.nan


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_j a_rj b_rj per row as one batched BLAS call (no (C, N) temporary): (C, N), (C, N) -> (C,)."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def consistency_summary(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    k: int = 10,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int | None = None,
    spearman_pairs: int = SPEARMAN_PAIRS,
    seed: int = 0,
) -> ConsistencySummary:
    """Global figures, per-sample inconsistency and the top-k pairs, one block of rows at a time.

    Memory is O(chunk_size * N) for the block and O(k) for the running top-k, plus the Spearman
    sample; no (N, N) matrix is ever held. Mean |A_I - A_T|, Pearson's r, the symmetric KL, the
    per-sample scores and the top-k are exact (equal to the dense path up to float rounding).

    Args:
        image_features: L2-normalised image embeddings, (N, D).
        text_features: L2-normalised text embeddings of the same pairs, (N, D).
        k: How many of the most inconsistent pairs i < j to return (at most N(N-1)/2).
        temperature: Softmax temperature of the symmetric KL.
        chunk_size: Rows per block; None picks CHUNK_ELEMENTS // N.
        spearman_pairs: Pairs the Spearman ranks at most; more pairs than this are sampled.
        seed: Seed of the Spearman sample.
    """
    _check_pairs(image_features, text_features, minimum=2)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n, device = image_features.shape[0], image_features.device
    images, texts = image_features.float(), text_features.float()
    chunk = max(1, min(n, chunk_size or CHUNK_ELEMENTS // n))
    k = max(0, min(k, n * (n - 1) // 2))
    columns = torch.arange(n, device=device)

    moments = _Moments()
    per_sample = torch.empty(n, device=device)
    kl_sum = 0.0
    top_values = torch.empty(0, device=device)
    top_index = torch.empty(0, dtype=torch.long, device=device)  # flat index i * N + j
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = torch.arange(start, stop, device=device)
        diagonal = (rows - start, rows)  # where each row's own entry sits in the block
        image_image = images[start:stop] @ images.T  # (C, N)
        text_text = texts[start:stop] @ texts.T  # (C, N)

        # Pearson: centre on the block's off-diagonal means, then merge the block's moments.
        count = (stop - start) * (n - 1)
        mean_x = float((image_image.sum() - image_image[diagonal].sum()) / count)
        mean_y = float((text_text.sum() - text_text[diagonal].sum()) / count)
        image_image -= mean_x
        text_text -= mean_y
        x_diag, y_diag = image_image[diagonal], text_text[diagonal]  # (C,)
        m2_x = float(_row_dot(image_image, image_image).double().sum() - x_diag.double().square().sum())
        m2_y = float(_row_dot(text_text, text_text).double().sum() - y_diag.double().square().sum())
        c_xy = float(_row_dot(image_image, text_text).double().sum() - (x_diag.double() * y_diag.double()).sum())
        moments.merge(count, mean_x, mean_y, m2_x, m2_y, c_xy)

        # |A_I - A_T| = |(x - mean_x) - (y - mean_y) + (mean_x - mean_y)|; the diagonal counts as 0.
        gap = (image_image - text_text).add_(mean_x - mean_y).abs_()  # (C, N)
        gap[diagonal] = 0
        per_sample[start:stop] = gap.sum(dim=1) / (n - 1)
        if k:
            gap.masked_fill_(columns[None, :] <= rows[:, None], -1.0)  # keep j > i: each pair once
            values, flat = gap.view(-1).topk(min(k, gap.numel()))
            top_values, picked = torch.cat([top_values, values]).topk(min(k, top_values.numel() + values.numel()))
            top_index = torch.cat([top_index, start * n + flat])[picked]
        del gap

        # Symmetric KL of row softmaxes without the diagonal (softmax ignores the per-block shift).
        image_image[diagonal] = -math.inf
        text_text[diagonal] = -math.inf
        log_p = torch.log_softmax(image_image.div_(temperature), dim=1)
        log_q = torch.log_softmax(text_text.div_(temperature), dim=1)
        del image_image, text_text
        log_ratio = log_p - log_q
        log_ratio[diagonal] = 0  # -inf - -inf
        kl_sum += float(_row_dot(log_p.exp_().sub_(log_q.exp_()), log_ratio).double().sum())
        del log_p, log_q, log_ratio

    first, second = top_index // n, top_index % n
    spearman, used, exact = _sampled_spearman(images, texts, spearman_pairs, seed)
    figures = ConsistencyFigures(
        pairs=n,
        mean_abs_inconsistency=float(per_sample.double().mean()),
        pearson=moments.pearson,
        spearman=spearman,
        symmetric_kl=kl_sum / n,
        temperature=temperature,
        spearman_pairs=used,
        spearman_exact=exact,
    )
    top = InconsistentPairs(
        first=first,
        second=second,
        image_affinity=(images[first] * images[second]).sum(dim=1),
        text_affinity=(texts[first] * texts[second]).sum(dim=1),
    )
    return ConsistencySummary(figures=figures, sample_inconsistency=per_sample, top_pairs=top)


def sample_pairs(n: int, max_pairs: int, seed: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Pairs i < j of N samples as a (2, M) long tensor, sorted by (i, j).

    All N(N-1)/2 pairs when they number at most `max_pairs`; otherwise `max_pairs` ordered pairs
    i != j drawn uniformly with a seeded generator, each sorted to i < j, duplicates dropped (so M
    is a little under `max_pairs`): a uniform random subset of the pairs.
    """
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return torch.triu_indices(n, n, offset=1, device=device)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (max_pairs,), generator=generator)
    second = torch.randint(n - 1, (max_pairs,), generator=generator)
    second += second >= first  # uniform over j != i
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    flat = torch.unique(low * n + high)  # sorted, distinct
    return torch.stack([flat // n, flat % n]).to(device)


def pair_affinities(
    image_features: torch.Tensor, text_features: torch.Tensor, pairs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_I[i, j] and A_T[i, j] for listed pairs (2, M), in batches: memory O(batch * D), never (N, N)."""
    image_values, text_values = [], []
    for start in range(0, pairs.shape[1], _PAIR_BATCH):
        first, second = pairs[:, start : start + _PAIR_BATCH]
        image_values.append((image_features[first].float() * image_features[second].float()).sum(dim=1))
        text_values.append((text_features[first].float() * text_features[second].float()).sum(dim=1))
    return torch.cat(image_values), torch.cat(text_values)


def _sampled_spearman(images: torch.Tensor, texts: torch.Tensor, max_pairs: int, seed: int) -> tuple[float, int, bool]:
    """Spearman's rho over all pairs, or over a seeded sample of them: (rho, pairs used, exact)."""
    n = images.shape[0]
    pairs = sample_pairs(n, max_pairs, seed, images.device)
    x, y = pair_affinities(images, texts, pairs)
    return spearman_correlation(x, y), pairs.shape[1], pairs.shape[1] == n * (n - 1) // 2


def _check_pairs(image_features: torch.Tensor, text_features: torch.Tensor, minimum: int = 1) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"Expected image and text features of one shape (N, D), got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}."
        )
    if image_features.shape[0] < minimum:
        raise ValueError(f"Need at least {minimum} pairs to compare affinities, got {image_features.shape[0]}.")
