"""Sample-wise affinity consistency between the image side and the text side of N pairs.

SaCo (Wu et al., CVPR 2024) names the *affinity inconsistency problem*: two images that look
alike should be as similar as the captions that describe them. With L2-normalised global
embeddings I (N, D) and T (N, D):

    A_I = I I^T,  A_T = T T^T  (cosine, (N, N)),  inconsistency = |A_I - A_T|.

The paper's exact distance, whether its affinities are softmaxed and how it treats the diagonal
are not public. vlviz exposes the options below with the defaults of ../shared/SEEDS.md: raw
cosine affinities, the diagonal (cos(x, x) = 1 on both sides) excluded, the mean absolute difference as the main
figure, and a symmetric KL between row-softmaxes at a temperature as an alternative.

Two paths give the same figures:
  - dense (`consistency_figures` and friends): full (N, N) matrices, for the few hundred pairs a
    heatmap can show;
  - chunked (`consistency_summary`): square tiles on and above the diagonal, memory
    O(tile^2 + N + k), never an (N, N) matrix, for thousands to 100k pairs. Every figure is exact
    except Spearman, which needs ranks over all N(N-1)/2 values: it is exact while they number at
    most `spearman_pairs`, and beyond that is computed on a seeded uniform random sample of that
    many pairs (said in the result).

Shapes: N pairs, D embedding width, R x S a tile, C rows of a block, K pairs asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from vlviz.metrics.affinity import affinity

DEFAULT_TEMPERATURE = 0.1  # vlviz's choice for the KL option; the paper gives none
SPEARMAN_PAIRS = 500_000  # exact Spearman up to N = 1000 pairs, sampled beyond
CHUNK_ELEMENTS = 2**23  # entries of one tile or block: 32 MB in float32
_PAIR_BATCH = 8192  # pairs whose dot products `pair_affinities` takes at once


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
    """Running count, means, centred sums of squares and co-moment of (x, y) values, in float64.

    Tiles are merged with Chan et al.'s pairwise update, so Pearson's r stays accurate over
    billions of entries with a mean far from zero.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean_x = self.mean_y = self.m2_x = self.m2_y = self.c_xy = 0.0

    def merge(
        self, x: torch.Tensor, y: torch.Tensor, upper: bool, scratch_x: torch.Tensor, scratch_y: torch.Tensor
    ) -> None:
        """Add a (R, S) tile of values; `upper`: only its strict upper triangle (a diagonal tile).

        The centred values are written into `scratch_x` and `scratch_y`, (R, S) buffers the caller reuses.
        """
        rows, columns = x.shape
        count = rows * (rows - 1) // 2 if upper else rows * columns
        if count == 0:
            return
        tile_x, tile_y = (x.triu(1), y.triu(1)) if upper else (x, y)  # zeros below count for nothing
        mean_x, mean_y = float(tile_x.sum()) / count, float(tile_y.sum()) / count
        centred_x, centred_y = torch.sub(x, mean_x, out=scratch_x), torch.sub(y, mean_y, out=scratch_y)
        if upper:
            centred_x, centred_y = centred_x.triu_(1), centred_y.triu_(1)
        m2_x = float(_row_dot(centred_x, centred_x).double().sum())
        m2_y = float(_row_dot(centred_y, centred_y).double().sum())
        c_xy = float(_row_dot(centred_x, centred_y).double().sum())
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
        """r, or NaN when either side is constant to float32 precision (std below 1e-6)."""
        if min(self.m2_x, self.m2_y) <= 1e-12 * self.count:
            return math.nan
        return self.c_xy / math.sqrt(self.m2_x * self.m2_y)


class _SoftmaxMeans:
    """Per-row sum_j p_ij d_ij for p_i = softmax_j(z_ij), accumulated tile by tile (online softmax).

    Keeps, for each row, a running maximum m_i of the logits z_ij seen so far, the normaliser
    s_i = sum_j exp(z_ij - m_i) and w_i = sum_j exp(z_ij - m_i) d_ij, rescaling both when m_i grows
    (the trick of flash attention); the mean is w_i / s_i. Excluded entries carry z = -inf.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.maximum = torch.full((n,), -math.inf, device=device)
        self.normaliser = torch.zeros(n, device=device)
        self.weighted = torch.zeros(n, device=device)

    def merge(self, rows: slice, logits: torch.Tensor, values: torch.Tensor, scratch: torch.Tensor) -> None:
        """Add columns for `rows`: logits z and values d, each (R, S); `scratch` is an (R, S) buffer to reuse."""
        lowest = torch.finfo(logits.dtype).min  # a finite floor, so an all -inf row gives exp(-inf) = 0
        maximum = torch.maximum(self.maximum[rows], logits.amax(dim=1)).clamp_min(lowest)  # (R,)
        weights = torch.sub(logits, maximum[:, None], out=scratch).exp_()  # (R, S)
        rescale = torch.exp(self.maximum[rows] - maximum)  # (R,)
        self.normaliser[rows] = self.normaliser[rows] * rescale + weights.sum(dim=1)
        self.weighted[rows] = self.weighted[rows] * rescale + weights.mul_(values).sum(dim=1)
        self.maximum[rows] = maximum

    def means(self) -> torch.Tensor:
        return self.weighted / self.normaliser


class _Tiles:
    """Tile-sized buffers allocated once per pass and reused for every tile.

    A pass over 100k samples visits about 600 tiles of 32 MB; allocating each tile's temporaries anew
    lets glibc's heap fragment until the resident set reaches many GB, while the live memory is a few
    tiles. With every (R, S) value written into these buffers, the loop allocates nothing tile-sized.
    """

    def __init__(self, count: int, side: int, device: torch.device) -> None:
        self.flat = torch.empty(count, side * side, device=device)

    def __call__(self, index: int, rows: int, columns: int) -> torch.Tensor:
        """Buffer `index` as a contiguous (rows, columns) tile."""
        return self.flat[index, : rows * columns].view(rows, columns)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_j a_rj b_rj per row as one batched BLAS call (no (R, S) temporary): (R, S), (R, S) -> (R,)."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def _merge_top(
    top_values: torch.Tensor, top_index: torch.Tensor, tile: torch.Tensor, row0: int, col0: int, n: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of the running top-k and a (R, S) tile of |A_I - A_T| (-1 where excluded).

    Only rows whose maximum beats the running k-th value are searched, which after the first
    tiles is usually none. Indices are flat, i * N + j.
    """
    rows = torch.arange(tile.shape[0], device=tile.device)
    if top_values.numel() == k:
        rows = rows[tile.amax(dim=1) > top_values[-1]]
    if rows.numel() == 0:
        return top_values, top_index
    candidates = tile[rows]  # (R', S)
    values, flat = candidates.view(-1).topk(min(k, candidates.numel()))
    index = (row0 + rows[flat // tile.shape[1]]) * n + col0 + flat % tile.shape[1]
    values, index = torch.cat([top_values, values]), torch.cat([top_index, index])
    values, order = values.topk(min(k, values.numel()))
    return values, index[order]


def consistency_summary(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    k: int = 10,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int | None = None,
    spearman_pairs: int = SPEARMAN_PAIRS,
    seed: int = 0,
) -> ConsistencySummary:
    """Global figures, per-sample inconsistency and the top-k pairs, one square tile at a time.

    A_I and A_T are symmetric, so only the tiles on and above the diagonal are computed (half the
    work of full rows); each tile adds to the statistics of its rows and, transposed, of its
    columns. The symmetric KL needs row softmaxes over all j: since sum_j (p_ij - q_ij) = 0, the
    log-normalisers cancel and J_i = (1/tau) (sum_j p_ij d_ij - sum_j q_ij d_ij) with
    d = A_I - A_T, two softmax-weighted means accumulated online (`_SoftmaxMeans`).

    Memory is O(chunk_size^2) for a tile, O(N) for the per-sample sums, O(k) for the running
    top-k and O(spearman_pairs) for the Spearman pairs, whose affinities are read from the tiles
    as they pass; no (N, N) matrix is ever held. Mean |A_I - A_T|, Pearson's r, the symmetric KL,
    the per-sample scores and the top-k are exact (equal to the dense path up to float rounding);
    so is Spearman's rho while N(N-1)/2 <= spearman_pairs, and beyond that it is computed on a
    seeded uniform sample of that many pairs (`sample_pairs`).

    Args:
        image_features: L2-normalised image embeddings, (N, D).
        text_features: L2-normalised text embeddings of the same pairs, (N, D).
        k: How many of the most inconsistent pairs i < j to return (at most N(N-1)/2).
        temperature: Softmax temperature of the symmetric KL.
        chunk_size: Side of the square tiles; None picks sqrt(CHUNK_ELEMENTS).
        spearman_pairs: Pairs the Spearman ranks at most; more pairs than this are sampled.
        seed: Seed of the Spearman sample.
    """
    _check_pairs(image_features, text_features, minimum=2)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n, device = image_features.shape[0], image_features.device
    images, texts = image_features.float(), text_features.float()
    size = max(1, min(n, chunk_size or math.isqrt(CHUNK_ELEMENTS)))
    k = max(0, min(k, n * (n - 1) // 2))
    ranked = sample_pairs(n, spearman_pairs, seed, device)  # (2, M), sorted by i
    ranked_x, ranked_y = [], []  # their A_I and A_T values, tile by tile

    moments = _Moments()
    absolute_sums = torch.zeros(n, device=device)  # sum over j != i of |A_I - A_T|
    image_means, text_means = _SoftmaxMeans(n, device), _SoftmaxMeans(n, device)
    top_values = torch.empty(0, device=device)
    top_index = torch.empty(0, dtype=torch.long, device=device)  # flat, i * N + j
    tiles = _Tiles(5, size, device)  # A_I, A_T, their difference, two scratch tiles
    for row0 in range(0, n, size):
        rows = slice(row0, min(n, row0 + size))
        low, high = torch.searchsorted(ranked[0], torch.tensor([rows.start, rows.stop], device=device)).tolist()
        for col0 in range(row0, n, size):
            columns = slice(col0, min(n, col0 + size))
            diagonal = col0 == row0  # the tile holds (i, j) and (j, i): count it by rows only
            r, c = rows.stop - rows.start, columns.stop - columns.start
            image_image = torch.matmul(images[rows], images[columns].T, out=tiles(0, r, c))  # (R, S)
            text_text = torch.matmul(texts[rows], texts[columns].T, out=tiles(1, r, c))  # (R, S)

            first, second = ranked[0, low:high], ranked[1, low:high]
            inside = (second >= columns.start) & (second < columns.stop)
            ranked_x.append(image_image[first[inside] - row0, second[inside] - col0])
            ranked_y.append(text_text[first[inside] - row0, second[inside] - col0])
            moments.merge(image_image, text_text, diagonal, tiles(3, r, c), tiles(4, r, c))

            difference = torch.sub(image_image, text_text, out=tiles(2, r, c))  # (R, S)
            if diagonal:
                difference.fill_diagonal_(0)
            absolute = torch.abs(difference, out=tiles(3, r, c))
            absolute_sums[rows] += absolute.sum(dim=1)
            if not diagonal:
                absolute_sums[columns] += absolute.sum(dim=0)
            if k:
                if diagonal:  # each pair once: i < j
                    absolute.masked_fill_(torch.ones_like(absolute, dtype=torch.bool).tril_(), -1.0)
                top_values, top_index = _merge_top(top_values, top_index, absolute, row0, col0, n, k)
            del absolute

            image_image /= temperature  # logits of the row softmaxes
            text_text /= temperature
            if diagonal:
                image_image.fill_diagonal_(-math.inf)
                text_text.fill_diagonal_(-math.inf)
            image_means.merge(rows, image_image, difference, tiles(3, r, c))
            text_means.merge(rows, text_text, difference, tiles(3, r, c))
            if not diagonal:
                image_means.merge(columns, image_image.T, difference.T, tiles(3, c, r))
                text_means.merge(columns, text_text.T, difference.T, tiles(3, c, r))

    first, second = top_index // n, top_index % n
    kl_rows = (image_means.means() - text_means.means()) / temperature  # J_i, (N,)
    figures = ConsistencyFigures(
        pairs=n,
        mean_abs_inconsistency=float(absolute_sums.double().sum()) / (n * (n - 1)),
        pearson=moments.pearson,
        spearman=spearman_correlation(torch.cat(ranked_x), torch.cat(ranked_y)),
        symmetric_kl=float(kl_rows.double().mean()),
        temperature=temperature,
        spearman_pairs=ranked.shape[1],
        spearman_exact=ranked.shape[1] == n * (n - 1) // 2,
    )
    top = InconsistentPairs(
        first=first,
        second=second,
        image_affinity=(images[first] * images[second]).sum(dim=1),
        text_affinity=(texts[first] * texts[second]).sum(dim=1),
    )
    return ConsistencySummary(figures=figures, sample_inconsistency=absolute_sums / (n - 1), top_pairs=top)


def sample_pairs(n: int, max_pairs: int, seed: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Pairs i < j of N samples as a (2, M) long tensor, sorted by (i, j).

    All N(N-1)/2 pairs when they number at most `max_pairs` (M = N(N-1)/2); otherwise a uniformly
    random set of M = `max_pairs` distinct pairs, drawn with a seeded generator: ordered pairs
    i != j are drawn uniformly and sorted to i < j until enough distinct ones are found, and a
    random `max_pairs` of those are kept. Memory O(max_pairs).
    """
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return torch.triu_indices(n, n, offset=1, device=device)
    generator = torch.Generator().manual_seed(seed)
    flat = torch.empty(0, dtype=torch.long)  # distinct pairs so far, as i * N + j
    while flat.numel() < max_pairs:
        draws = 2 * (max_pairs - flat.numel())
        first = torch.randint(n, (draws,), generator=generator)
        second = torch.randint(n - 1, (draws,), generator=generator)
        second += second >= first  # uniform over j != i
        pairs = torch.minimum(first, second) * n + torch.maximum(first, second)
        flat = torch.unique(torch.cat([flat, pairs]))
    flat = flat[torch.randperm(flat.numel(), generator=generator)[:max_pairs]].sort().values
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


def _check_pairs(image_features: torch.Tensor, text_features: torch.Tensor, minimum: int = 1) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"Expected image and text features of one shape (N, D), got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}."
        )
    if image_features.shape[0] < minimum:
        raise ValueError(f"Need at least {minimum} pairs to compare affinities, got {image_features.shape[0]}.")
