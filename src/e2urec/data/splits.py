"""Temporal split, forget-set selection and shard assignment. Every random choice draws from its own
seeded stream, so changing one option never reshuffles another's outcome."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD

from e2urec.errors import E2URecError

SPLITS = ("train", "valid", "test")
# Independent random streams derived from the one user seed.
STREAM_FORGET, STREAM_SISA, STREAM_RECERASER, STREAM_HOLDOUT = 1, 2, 3, 4


def rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def split_sizes(n: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> tuple[int, int, int]:
    """Train and valid sizes are floored; test takes the remainder, so the sizes always sum to n."""
    n_train = int(n * fractions[0])
    n_valid = int(n * fractions[1])
    return n_train, n_valid, n - n_train - n_valid


def temporal_split(n: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> np.ndarray:
    """Rows already in time order: the first 60% train, the next 20% valid, the rest test."""
    n_train, n_valid, n_test = split_sizes(n, fractions)
    return np.repeat(np.array(SPLITS, dtype=object), [n_train, n_valid, n_test])


def choose_forget_users(train_users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random `fraction` of the distinct train users (at least one), returned sorted.

    The users are a prefix of one seeded permutation, so with the same seed a larger fraction forgets a superset
    of a smaller one (forget-size sweeps grow one set instead of drawing unrelated ones)."""
    if not 0.0 < fraction < 1.0:
        raise E2URecError(f"--forget-fraction must be strictly between 0 and 1, got {fraction}")
    users = np.sort(pd.unique(train_users))
    count = max(1, int(round(fraction * len(users))))
    chosen = rng(seed, STREAM_FORGET).permutation(len(users))[:count]
    return np.sort(users[chosen])


def choose_holdout_users(train_users: np.ndarray, excluded: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random `fraction` of the distinct train users (rounded; possibly none) outside `excluded`,
    returned sorted: users whose training-period samples no model trains on.

    They are to every model what the forgotten users are to Retrain (unseen users of the same period), so their
    samples give unlearning a level to aim at that needs no Retrain. Drawn from its own stream after the forget
    set, so holding users out never changes which users are forgotten."""
    if not 0.0 <= fraction < 1.0:
        raise E2URecError(f"--holdout-fraction must be in [0, 1), got {fraction}")
    users = np.sort(pd.unique(train_users))
    count = int(round(fraction * len(users)))
    candidates = users[~np.isin(users, excluded)]
    if count >= len(candidates):
        raise E2URecError(f"--holdout-fraction {fraction} would hold out {count} of the {len(candidates)} train users "
                          "not forgotten, leaving nothing to retain; use a smaller fraction")
    chosen = rng(seed, STREAM_HOLDOUT).permutation(len(candidates))[:count]
    return np.sort(candidates[chosen])


def sisa_shards(n_train: int, shards: int, seed: int) -> np.ndarray:
    """SISA: each training sample to a uniformly random shard."""
    return rng(seed, STREAM_SISA).integers(0, shards, size=n_train)


def receraser_shards(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, shards: int, seed: int, iterations: int = 10
) -> dict:
    """RecEraser's balanced partition: similar users share a shard, and shards hold similar amounts of data.

    Users are embedded by a truncated SVD of their (centred) rating vectors and clustered by k-means; then
    users are re-assigned greedily, closest (user, centroid) pairs first, under a capacity of
    1/shards of the training rows (RecEraser caps users; rows are capped here because a few heavy users
    would otherwise leave some shards with almost nothing to train on), and centroids re-estimated; a few
    rounds converge. Returns {user_id: shard}.
    """
    user_codes, user_ids = pd.factorize(users, sort=True)
    item_codes, _ = pd.factorize(items, sort=True)
    n_users = len(user_ids)
    if n_users < shards:
        raise E2URecError(f"--shards {shards} exceeds the {n_users} training users; use fewer shards")
    weight = np.bincount(user_codes, minlength=n_users)
    matrix = csr_matrix((ratings - 3.0, (user_codes, item_codes)), shape=(n_users, item_codes.max() + 1))
    dims = max(1, min(32, min(matrix.shape) - 1))
    if dims < min(matrix.shape):
        vectors = TruncatedSVD(n_components=dims, random_state=seed).fit_transform(matrix)
    else:
        vectors = matrix.toarray()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    centroids = KMeans(n_clusters=shards, n_init=4, random_state=seed).fit(vectors).cluster_centers_
    capacity = -(-weight.sum() // shards)
    assignment = np.full(n_users, -1)
    for _ in range(iterations):
        dist = ((vectors[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
        order = np.argsort(dist, axis=None, kind="stable")
        assignment = np.full(n_users, -1)
        load = np.zeros(shards, dtype=np.int64)
        for flat in order:
            user, shard = divmod(int(flat), shards)
            if assignment[user] < 0 and load[shard] + weight[user] <= capacity:
                assignment[user] = shard
                load[shard] += weight[user]
        # Users too heavy to fit anywhere go, heaviest first, to the least loaded shard.
        for user in sorted(np.flatnonzero(assignment < 0), key=lambda u: -weight[u]):
            shard = int(load.argmin())
            assignment[user] = shard
            load[shard] += weight[user]
        new = np.stack([vectors[assignment == s].mean(0) if (assignment == s).any() else centroids[s]
                        for s in range(shards)])
        if np.allclose(new, centroids):
            break
        centroids = new
    return dict(zip(user_ids.tolist(), assignment.tolist(), strict=True))
