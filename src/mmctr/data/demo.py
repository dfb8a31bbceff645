"""MicroLens-shaped synthetic data with a planted, known click probability.

``generate(out_dir, preset="demo", seed=2025, images=True)`` writes a dataset that follows
DATA_CONTRACT.md byte for byte in shape and type (train/valid/test/item_info parquet files,
``item_images/<item_id>.jpg``) plus ``oracle.parquet``: the true click probability every label
was drawn from, so a model's AUC can be compared with the best achievable one.

Presets (rows train / valid / test, items, users)::

    tiny   2,000 / 500 / 500             300 items     400 users   (tests)
    demo   200,000 / 10,000 / 20,000     10,000 items  20,000 users
    full   3,600,000 / 10,000 / 379,142  91,718 items  1,000,000 users (MicroLens_1M_x1 sizes)

The generative model
--------------------
Everything below is drawn from ``numpy.random.Generator`` streams seeded by
``SeedSequence([seed, ...])`` (one stream per purpose and per chunk of rows), so the same seed
gives the same bytes; all work is vectorised numpy, rows are built in chunks of
``CHUNK_ROWS``.

Items (ids 1..n_items-1; id 0 is padding)
    * cluster ``c_i`` ~ Dirichlet(1)-weighted choice of ``K`` topics (8 / 32 / 64 by preset);
    * latent content ``z_i = sqrt(RHO) * C[c_i] + sqrt(1 - RHO) * e_i`` in R^16 with
      ``C, e ~ N(0, I)``: items of one topic are similar (cosine ~RHO), others are not;
      ``zn_i = z_i / |z_i|``;
    * popularity ``log pop_i ~ N(0, POP_SIGMA)``; the history sampler draws items
      proportional to ``pop``, the target sampler proportional to ``pop ** 0.8``;
    * 1..5 tags (P = .10 .15 .20 .20 .35), left-padded to 5 slots: drawn without replacement
      from the topic's pool of up to 64 tags (Zipf weights inside the pool), each slot replaced by a
      uniformly random tag with probability 0.15. Tags come from ids 1..n_tags_used
      (200 / 2,000 / 11,739) of the 11,740-wide vocabulary;
    * ``item_emb_d128 = (z_i @ W.T + EMB_NOISE * N(0, I)) * 0.25`` with a fixed
      ``W ~ N(0, 1/16)`` of shape (128, 16): a NOISY linear view of the content, like the
      official frozen PCA-128 embedding (a least-squares read-out recovers ~75% of the variance
      of ``z``);
    * the image (64x64 JPEG) is a deterministic picture of ``p_i = z_i @ Q.T`` (``Q`` a fixed
      random rotation, so every image parameter mixes all of ``z``): a global background
      colour (p[0:3], the strongest carrier: it survives even a randomly initialised CLIP +
      PCA), a brightness offset per quadrant (p[3:7]), a disc with its own position, radius
      and colour (p[7:13]) and a faint stripe texture with frequency / angle / contrast from
      p[13:16], plus a little pixel noise;
    * base engagement levels ``likes_base``/``views_base`` in 1..10: deciles of
      ``log pop + N(0, 0.5)`` (two independent noises);
    * a sparse tag effect per tag id (15% of tags carry ``N(0, 1)``, the rest 0), an item
      "visual appeal" ``q_i = (z_i @ v + 0.3 * ((z_i @ v2) ** 2 - 1)) / 1.05`` (std ~1, ``v, v2``
      fixed unit vectors) and a pure id effect ``b_i ~ N(0, ID_SIGMA)``;
    * cold items: a random 10% of the items are never the target of a train row.

Users (user_id 1..n_users)
    * 1..3 favourite topics (drawn by topic size);
    * a history length ``L_u = clip(3 + floor(LogNormal(ln 3.5, 0.95)), 3, 100)``
      (min 3, median 6, mean ~8, max 100, as MicroLens).

Rows (each split independently; user drawn uniformly)
    * history: ``L_u`` items, oldest first; each item comes with probability 0.75 from one of
      the user's favourite topics (popularity-weighted inside the topic), otherwise from the
      whole catalogue (popularity-weighted). Left-padded with 0 to 100, most recent LAST;
    * target: with probability 0.5 from one of the user's favourite topics, otherwise from the
      catalogue (``pop ** 0.8``). Train targets are never cold items; in valid/test 10% of
      the rows take a cold target and the rest take items that are targets in train;
    * ``likes_level``/``views_level``: the item's base level moved by -1/+1 with probability
      0.15 each (clipped to 1..10);
    * the click logit::

          logit = b0 + A_AFF * (aff - 0.2) + A_APPEAL * q_t + A_TAG * sum(tag_effect[tags_t])
                + likes_eff[likes] + views_eff[views] + 0.08 * (likes - views)
                + A_POP * std(log pop_t) + b_t

      ``aff = 0.5 * cos(h, zn_t) + 0.5 * sum_j a_j * s_j`` where ``s_j = zn_j . zn_t`` for the
      history items ``j``, ``h = sum_j w_j zn_j`` with recency weights
      ``w_j = exp(-(age_j) / 5)`` (age 0 = most recent), and ``a = softmax(4 s_j + log w_j)``
      (attention-like: one very similar recent item counts a lot). ``likes_eff`` rises with
      the level, ``views_eff`` is an inverted U (very high views with few likes = clickbait);
    * ``p_true = sigmoid(logit)``, ``label ~ Bernoulli(p_true)``. ``b0`` is solved once (on a
      pilot sample of train-like rows) so that ~25% of the train labels are positive.

With these scales the oracle AUC is ~0.85 on every split and preset (demo valid: 0.852 with
seed 2025), while a logistic regression on one-hot(item_id) + levels, which sees no history
and no content, reaches ~0.65 (:func:`id_levels_baseline_auc`). Most of the gap is the
history-target affinity (std ~1.6 logits, versus ~0.8 for everything fixed per item or row),
so a model has to read the history to get close to the oracle; content (tags, embedding,
image) is what makes the cold 10% of valid/test predictable.

Rows are in generation order (users drawn at random): there is no time order across rows.

Real image folders always hold bad files, so ~0.5% of the items get no image and ~0.2% get a
corrupt one (truncated JPEG bytes, and one HTML error page saved as ``.jpg``);
``item_images_manifest.csv`` (``item_id,status`` with status ``missing``, ``truncated`` or
``not_image``) lists exactly those items; every other item 1..n_items-1 has a valid JPEG.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmctr.atomic import atomic_write_parquet, atomic_write_text

SEQ_LEN = 100
TAG_SLOTS = 5
TAG_VOCAB = 11_740
EMB_DIM = 128
LATENT_DIM = 16
IMAGE_SIZE = 64
TAG_POOL_MAX = 64
CHUNK_ROWS = 262_144
ROW_GROUP_ROWS = CHUNK_ROWS
# zstd without dictionary pages: about as small as snappy+dictionary for the mostly-zero
# item_seq column and roughly twice as fast to read back
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": False,
    "row_group_size": ROW_GROUP_ROWS,
}

# Generative-model constants (see the module docstring).
RHO = 0.5
POP_SIGMA = 1.0
TARGET_POP_POWER = 0.8
EMB_NOISE = 1.5
ID_SIGMA = 0.3
P_FAV_HISTORY = 0.75
P_FAV_TARGET = 0.5
COLD_ITEM_FRAC = 0.10
COLD_ROW_FRAC = 0.10
RECENCY_TAU = 5.0
ATTN_TEMP = 4.0
A_AFF = 6.0
A_APPEAL = 0.45
A_TAG = 0.35
A_POP = 0.25
POSITIVE_RATE = 0.25
LIKES_EFF = np.array([0.0, -0.45, -0.35, -0.25, -0.15, -0.05, 0.05, 0.15, 0.25, 0.35, 0.45])
VIEWS_EFF = np.array([0.0] + [0.2 - 0.025 * (lv - 6) ** 2 for lv in range(1, 11)])
MISSING_IMAGE_FRAC = 0.005
CORRUPT_IMAGE_FRAC = 0.002

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Knobs:
    """Shape and signal strengths of the generated world; the defaults are the demo data's
    (a default ``Knobs()`` gives the same bytes as before the knobs existed).

    ``history_median``/``history_sigma``: user history lengths ``3 + LogNormal(ln(median -
    2.5), sigma)``, capped at 100 (MicroLens: 3.5 / 0.95 -> median 6, mean ~8; real feeds:
    try 40 / 1.0 -> mean ~50 with many capped at 100). ``emb_noise``: noise of
    ``item_emb_d128`` around the content (weak image signal: 4); ``image_noise``: pixel noise
    of the pictures. ``topic_rho``: how much of an item's content its topic fixes (0..1),
    ``tag_noise``: the chance a tag slot is a random tag (weak topic: 0.1 / 0.5).
    ``pop_sigma``/``pop_effect``: spread of log popularity and its weight in the click logit
    (strong popularity: 1.5 / 0.8). ``unseen_user_frac``: share of the users that never
    appear in train (valid/test draw from all users, so about this share of their rows
    belongs to an unseen user).
    """

    history_median: float = 3.5
    history_sigma: float = 0.95
    emb_noise: float = EMB_NOISE
    image_noise: float = 0.02
    topic_rho: float = RHO
    tag_noise: float = 0.15
    pop_sigma: float = POP_SIGMA
    pop_effect: float = A_POP
    unseen_user_frac: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "history_median": self.history_median > 0,
            "history_sigma": self.history_sigma >= 0,
            "emb_noise": self.emb_noise >= 0,
            "image_noise": self.image_noise >= 0,
            "topic_rho": 0 <= self.topic_rho <= 1,
            "tag_noise": 0 <= self.tag_noise <= 1,
            "pop_sigma": self.pop_sigma > 0,
            "unseen_user_frac": 0 <= self.unseen_user_frac < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"generator knobs out of range: {', '.join(bad)} ({self})")

    def changed(self) -> dict[str, float]:
        """The knobs that differ from the defaults."""
        default = Knobs()
        return {k: v for k, v in vars(self).items() if v != getattr(default, k)}


@dataclass(frozen=True)
class Preset:
    name: str
    n_train: int
    n_valid: int
    n_test: int
    n_items: int  # rows of item_info, padding row 0 included
    n_users: int
    n_clusters: int
    n_tags_used: int

    def rows(self, split: str) -> int:
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}[split]


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 2_000, 500, 500, 300, 400, 8, 200),
    "demo": Preset("demo", 200_000, 10_000, 20_000, 10_000, 20_000, 32, 2_000),
    "full": Preset("full", 3_600_000, 10_000, 379_142, 91_718, 1_000_000, 64, TAG_VOCAB - 1),
}


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *keys]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _Sampler:
    """Weighted item sampling, globally or inside a topic, by inverse-CDF ``searchsorted``.

    Items with weight 0 are never drawn. A topic with no eligible item falls back to the
    global distribution.
    """

    def __init__(self, weights: np.ndarray, cluster: np.ndarray, n_clusters: int):
        weights = np.asarray(weights, dtype=np.float64)
        if not (weights > 0).any():
            raise ValueError("sampler has no item with positive weight")
        self.order = np.argsort(cluster, kind="stable")
        w = weights[self.order]
        c = cluster[self.order]
        self.cum = np.cumsum(w)
        self.total = self.cum[-1]
        tot = np.bincount(c, weights=w, minlength=n_clusters)
        self.start = np.concatenate([[0.0], np.cumsum(tot)[:-1]])
        self.tot = tot
        self.has = tot > 0
        # index range [first_pos, last_pos] of positive-weight items of each topic (clip guard)
        pos_idx = np.flatnonzero(w > 0)
        self.first_pos = np.full(n_clusters, 0, dtype=np.int64)
        self.last_pos = np.full(n_clusters, len(w) - 1, dtype=np.int64)
        cp = c[pos_idx]
        self.last_pos[cp] = pos_idx  # ascending order: the last write wins -> largest index
        self.first_pos[cp[::-1]] = pos_idx[::-1]
        self.last_global = int(pos_idx[-1])

    def global_(self, u: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.cum, u * self.total, side="right")
        return self.order[np.minimum(idx, self.last_global)]

    def in_cluster(self, c: np.ndarray, u: np.ndarray) -> np.ndarray:
        ok = self.has[c]
        cc = np.where(ok, c, 0)
        idx = np.searchsorted(self.cum, self.start[cc] + u * self.tot[cc], side="right")
        idx = np.clip(idx, self.first_pos[cc], self.last_pos[cc])
        out = self.order[idx]
        if not ok.all():
            out = np.where(ok, out, self.global_(u))
        return out


@dataclass
class _World:
    """Item and user tables plus the fixed parameters of the click model."""

    preset: Preset
    knobs: Knobs
    cluster: np.ndarray  # (n_items,) int64, item 0 = -1 -> mapped to 0 and weight 0
    z: np.ndarray  # (n_items, 16) float64 latent content (row 0 zeros)
    zn: np.ndarray  # (n_items, 16) float32 unit-norm content (row 0 zeros)
    logpop_std: np.ndarray  # (n_items,) standardised log popularity
    pop: np.ndarray  # (n_items,) popularity (0 for item 0)
    tags: np.ndarray  # (n_items, 5) int64 left-padded
    emb: np.ndarray  # (n_items, 128) float32
    img_rot: np.ndarray  # (16, 16) rotation for the image parameters
    likes_base: np.ndarray  # (n_items,) 1..10
    views_base: np.ndarray
    item_const: np.ndarray  # (n_items,) appeal + tags + popularity + id effect
    cold: np.ndarray  # (n_items,) bool
    user_len: np.ndarray  # (n_users,) history length
    user_fav: np.ndarray  # (n_users, 3) favourite topics
    user_nfav: np.ndarray  # (n_users,) 1..3
    hist_sampler: _Sampler
    b0: float = 0.0


def history_lengths(rng: np.random.Generator, n: int, knobs: Knobs = Knobs()) -> np.ndarray:
    """MicroLens-like history lengths: min 3, median 6, mean ~8, max 100 (by default)."""
    x = rng.lognormal(mean=np.log(knobs.history_median), sigma=knobs.history_sigma, size=n)
    return np.clip(3 + np.floor(x), 3, SEQ_LEN).astype(np.int64)


def _item_tags(
    rng: np.random.Generator, preset: Preset, cluster: np.ndarray, knobs: Knobs
) -> tuple[np.ndarray, np.ndarray]:
    """Items' tags (n, 5), left-padded with 0, and each tag's click effect (TAG_VOCAB,):
    per-topic pools, Zipf weights inside a pool, top-n by Efraimidis-Spirakis keys."""
    n, k = preset.n_items, preset.n_clusters
    n_tags = preset.n_tags_used
    pool_size = int(min(n_tags, max(8, 2 * n_tags // k), TAG_POOL_MAX))
    pools = np.stack(
        [rng.choice(np.arange(1, n_tags + 1), size=pool_size, replace=False) for _ in range(k)]
    )
    zipf = 1.0 / np.arange(1, pool_size + 1)
    # weighted sampling without replacement: the 5 smallest Exp(1) / weight keys
    keys = rng.standard_exponential((n, pool_size)) / zipf
    top = np.argpartition(keys, TAG_SLOTS - 1, axis=1)[:, :TAG_SLOTS]
    real = pools[cluster[:, None], top]  # (n, 5)
    swap = rng.random((n, TAG_SLOTS)) < knobs.tag_noise
    real = np.where(swap, rng.integers(1, n_tags + 1, size=(n, TAG_SLOTS)), real)
    n_real = rng.choice(np.arange(1, TAG_SLOTS + 1), size=n, p=[0.10, 0.15, 0.20, 0.20, 0.35])
    slot = np.arange(TAG_SLOTS)[None, :]
    tags = np.where(slot >= TAG_SLOTS - n_real[:, None], real, 0).astype(np.int64)
    tags[0] = 0
    tag_effect = np.where(rng.random(TAG_VOCAB) < 0.15, rng.standard_normal(TAG_VOCAB), 0.0)
    tag_effect[0] = 0.0
    return tags, tag_effect


def _build_world(preset: Preset, seed: int, knobs: Knobs = Knobs()) -> _World:
    n, k, d = preset.n_items, preset.n_clusters, LATENT_DIM
    rng = _rng(seed, 0)
    # topics and latent content
    topic_w = rng.dirichlet(np.ones(k))
    centers = rng.standard_normal((k, d))
    cluster = rng.choice(k, size=n, p=topic_w)
    cluster[0] = 0
    rho = knobs.topic_rho
    z = np.sqrt(rho) * centers[cluster] + np.sqrt(1 - rho) * rng.standard_normal((n, d))
    z[0] = 0.0
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    zn = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0).astype(np.float32)
    # popularity
    logpop = rng.normal(0.0, knobs.pop_sigma, n)
    pop = np.exp(logpop)
    pop[0] = 0.0
    logpop_std = (logpop - logpop[1:].mean()) / logpop[1:].std()
    logpop_std[0] = 0.0
    tags, tag_effect = _item_tags(rng, preset, cluster, knobs)  # the same draws, in order
    # frozen multimodal embedding: noisy linear view of z
    w_emb = rng.normal(0.0, 1.0 / np.sqrt(d), (EMB_DIM, d))
    emb = (z @ w_emb.T + knobs.emb_noise * rng.standard_normal((n, EMB_DIM))) * 0.25
    emb[0] = 0.0
    # image parameters: a random rotation of z
    img_rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    # visual appeal, id effect
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    v2 = rng.standard_normal(d)
    v2 /= np.linalg.norm(v2)
    appeal = (z @ v + 0.3 * ((z @ v2) ** 2 - 1.0)) / 1.05
    id_effect = rng.normal(0.0, ID_SIGMA, n)
    item_const = (
        A_APPEAL * appeal
        + A_TAG * tag_effect[tags].sum(axis=1)
        + knobs.pop_effect * logpop_std
        + id_effect
    )
    item_const[0] = 0.0
    # engagement levels: deciles of noisy popularity
    likes_base = _deciles(logpop + rng.normal(0.0, 0.5, n))
    views_base = _deciles(logpop + rng.normal(0.0, 0.5, n))
    # cold items
    cold = np.zeros(n, dtype=bool)
    n_cold = max(1, int(round(COLD_ITEM_FRAC * (n - 1))))
    cold[1 + rng.permutation(n - 1)[:n_cold]] = True
    # users
    rng_u = _rng(seed, 1)
    m = preset.n_users
    user_len = history_lengths(rng_u, m, knobs)
    user_nfav = rng_u.integers(1, 4, m)
    user_fav = rng_u.choice(k, size=(m, 3), p=topic_w)
    return _World(
        preset=preset,
        knobs=knobs,
        cluster=cluster.astype(np.int64),
        z=z,
        zn=zn,
        logpop_std=logpop_std,
        pop=pop,
        tags=tags,
        emb=emb.astype(np.float32),
        img_rot=img_rot,
        likes_base=likes_base,
        views_base=views_base,
        item_const=item_const,
        cold=cold,
        user_len=user_len,
        user_fav=user_fav,
        user_nfav=user_nfav,
        hist_sampler=_Sampler(pop, cluster, k),
    )


def _deciles(x: np.ndarray) -> np.ndarray:
    rank = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    return (1 + (rank * 10) // len(x)).astype(np.int64)


def _target_sampler(world: _World, allowed: np.ndarray) -> _Sampler:
    w = np.where(allowed, world.pop**TARGET_POP_POWER, 0.0)
    w[0] = 0.0
    return _Sampler(w, world.cluster, world.preset.n_clusters)


@dataclass
class _Rows:
    user_id: np.ndarray
    hist: np.ndarray  # flat history items, oldest first per row
    lengths: np.ndarray
    item_id: np.ndarray
    likes: np.ndarray
    views: np.ndarray
    logit0: np.ndarray  # logit without b0


def _gen_rows(
    world: _World,
    n: int,
    rng: np.random.Generator,
    warm: _Sampler,
    cold: _Sampler | None = None,
) -> _Rows:
    """``n`` rows: users, histories, targets, levels and the click logit (without b0)."""
    # users 0..seen-1 can appear in every split, the rest (unseen_user_frac) only where the
    # rows have cold items allowed, i.e. in valid and test
    seen = world.preset.n_users - int(round(world.knobs.unseen_user_frac * world.preset.n_users))
    users = rng.integers(0, world.preset.n_users if cold is not None else seen, n)
    lengths = world.user_len[users]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    total = int(lengths.sum())
    row_of = np.repeat(np.arange(n), lengths)
    pos = np.arange(total) - starts[row_of]  # 0 = oldest
    # history items
    hs = world.hist_sampler
    u = rng.random(total)
    fav = rng.random(total) < P_FAV_HISTORY
    pick = (rng.random(total) * world.user_nfav[users][row_of]).astype(np.int64)
    topic = world.user_fav[users[row_of], pick]
    hist = np.empty(total, dtype=np.int64)
    hist[fav] = hs.in_cluster(topic[fav], u[fav])
    hist[~fav] = hs.global_(u[~fav])
    # targets
    ut = rng.random(n)
    fav_t = rng.random(n) < P_FAV_TARGET
    topic_t = world.user_fav[users, (rng.random(n) * world.user_nfav[users]).astype(np.int64)]
    is_cold = rng.random(n) < COLD_ROW_FRAC if cold is not None else np.zeros(n, dtype=bool)
    target = np.empty(n, dtype=np.int64)
    for sampler, mask in ((warm, ~is_cold), (cold, is_cold)):
        if sampler is None or not mask.any():
            continue
        m_fav = mask & fav_t
        m_glob = mask & ~fav_t
        target[m_fav] = sampler.in_cluster(topic_t[m_fav], ut[m_fav])
        target[m_glob] = sampler.global_(ut[m_glob])
    # engagement levels
    jl = np.digitize(rng.random(n), [0.15, 0.85]) - 1  # -1 / 0 / +1 w.p. .15 / .7 / .15
    jv = np.digitize(rng.random(n), [0.15, 0.85]) - 1
    likes = np.clip(world.likes_base[target] + jl, 1, 10)
    views = np.clip(world.views_base[target] + jv, 1, 10)
    # affinity between the history and the target
    zn = world.zn
    h = zn[hist]  # (T, d)
    zt = zn[target]  # (n, d)
    s = np.einsum("td,td->t", h, zt[row_of]).astype(np.float64)
    age = (lengths[row_of] - 1 - pos).astype(np.float64)
    w = np.exp(-age / RECENCY_TAU)
    hsum = np.add.reduceat(h * w[:, None].astype(np.float32), starts, axis=0)
    hn = np.linalg.norm(hsum, axis=1)
    cos_mean = np.einsum("nd,nd->n", hsum, zt) / np.maximum(hn, 1e-12)
    a_logit = ATTN_TEMP * s + np.log(w)
    a_max = np.maximum.reduceat(a_logit, starts)
    e = np.exp(a_logit - a_max[row_of])
    att = np.add.reduceat(e * s, starts) / np.add.reduceat(e, starts)
    aff = 0.5 * cos_mean + 0.5 * att
    logit0 = (
        A_AFF * (aff - 0.2)
        + world.item_const[target]
        + LIKES_EFF[likes]
        + VIEWS_EFF[views]
        + 0.08 * (likes - views)
    )
    return _Rows(
        user_id=(users + 1).astype(np.int64),
        hist=hist.astype(np.int64),
        lengths=lengths,
        item_id=target,
        likes=likes.astype(np.int64),
        views=views.astype(np.int64),
        logit0=logit0,
    )


def _solve_b0(logit0: np.ndarray, rate: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(logit0 + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _padded_seq(hist: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat per-row histories -> (n, 100) left-padded matrix, most recent last."""
    n = len(lengths)
    mat = np.zeros((n, SEQ_LEN), dtype=np.int64)
    row_of = np.repeat(np.arange(n), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(hist)) - starts[row_of]
    mat[row_of, SEQ_LEN - lengths[row_of] + pos] = hist
    return mat


def _list_column(values_2d: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(n, k) numpy -> list<value_type> (built from the flat buffer, no Python lists)."""
    n, k = values_2d.shape
    flat = pa.array(np.ascontiguousarray(values_2d).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, k).cast(pa.list_(value_type))


SPLIT_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_seq", pa.list_(pa.int64())),
        ("item_id", pa.int64()),
        ("likes_level", pa.int64()),
        ("views_level", pa.int64()),
        ("label", pa.int64()),
    ]
)
ORACLE_SCHEMA = pa.schema([("split", pa.string()), ("row", pa.int64()), ("p_true", pa.float64())])


def _split_batch(rows: _Rows, label: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(rows.user_id),
            _list_column(_padded_seq(rows.hist, rows.lengths), pa.int64()),
            pa.array(rows.item_id),
            pa.array(rows.likes),
            pa.array(rows.views),
            pa.array(label.astype(np.int64)),
        ],
        schema=SPLIT_SCHEMA,
    )


def _item_info_table(world: _World) -> pa.Table:
    n = world.preset.n_items
    return pa.table(
        {
            "item_id": pa.array(np.arange(n, dtype=np.int64)),
            "item_tags": _list_column(world.tags, pa.int64()),
            "item_emb_d128": _list_column(world.emb, pa.float32()),
        }
    )


# ---------------------------------------------------------------------------------- images


def render_images(
    z: np.ndarray,
    rot: np.ndarray,
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
    noise: float = 0.02,
) -> np.ndarray:
    """Latent content (B, 16) -> uint8 images (B, size, size, 3); see the module docstring."""
    f32 = np.float32
    p = (z @ rot.T).astype(f32)  # (B, 16) image parameters

    def col(x: np.ndarray) -> np.ndarray:  # (B,) -> (B, 1, 1) for broadcasting over pixels
        return x.astype(f32)[:, None, None]

    ax = ((np.arange(size, dtype=f32) + 0.5) / size * 2 - 1).astype(f32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")  # (S, S)
    base = _sigmoid(1.3 * p[:, 0:3])  # (B, 3) global colour
    quad = 0.22 * np.tanh(p[:, 3:7])  # (B, 4) brightness per quadrant
    q_idx = (yy > 0).astype(np.int64) * 2 + (xx > 0).astype(np.int64)
    shade = quad[:, q_idx]  # (B, S, S)
    # disc: position, radius (soft edge) and colour
    cx, cy = col(0.4 * np.tanh(p[:, 7])), col(0.4 * np.tanh(p[:, 8]))
    r = col(0.2 + 0.3 * _sigmoid(p[:, 9]))
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    disc = np.clip((r - dist) * (size / 2), 0.0, 1.0)  # (B, S, S)
    colour = _sigmoid(1.5 * p[:, 10:13])  # (B, 3)
    # stripes: frequency, angle, contrast
    freq = col(np.pi * (2.0 + 5.0 * _sigmoid(p[:, 13])))
    ang = np.pi * _sigmoid(p[:, 14])
    contrast = col(0.04 + 0.12 * _sigmoid(p[:, 15]))
    stripes = contrast * np.sin(freq * (xx * col(np.cos(ang)) + yy * col(np.sin(ang))))
    img = (1 - disc)[..., None] * (base[:, None, None, :] + shade[..., None])
    img += disc[..., None] * colour[:, None, None, :]
    img += stripes[..., None]
    img += rng.standard_normal(img.shape, dtype=f32) * f32(noise)
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255 + 0.5).astype(np.uint8)


NOT_IMAGE_BYTES = (
    b"<html><head><title>404 Not Found</title></head><body>404 Not Found</body></html>\n"
)


def write_images(world: _World, out_dir: Path, seed: int, batch: int = 512) -> dict[str, Any]:
    """Write ``item_images/<id>.jpg`` and ``item_images_manifest.csv``; returns counts."""
    from PIL import Image

    from mmctr.progress import track

    n = world.preset.n_items
    img_dir = out_dir / "item_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, 7)
    ids = 1 + rng.permutation(n - 1)
    n_missing = max(1, int(round(MISSING_IMAGE_FRAC * (n - 1))))
    n_corrupt = max(2, int(round(CORRUPT_IMAGE_FRAC * (n - 1))))
    missing = np.sort(ids[:n_missing])
    corrupt = np.sort(ids[n_missing : n_missing + n_corrupt])
    status = {int(i): "missing" for i in missing}
    status.update({int(i): "truncated" for i in corrupt[1:]})
    status[int(corrupt[0])] = "not_image"
    # stale files from an earlier run must not contradict the manifest
    for i in missing:
        (img_dir / f"{int(i)}.jpg").unlink(missing_ok=True)
    for path in img_dir.glob("*.jpg"):
        if path.stem.isdigit() and not 1 <= int(path.stem) < n:
            path.unlink()
    written = 0
    for lo in track(range(1, n, batch), "item images", unit="batch"):
        hi = min(n, lo + batch)
        rng_px = _rng(seed, 8, lo)
        pix = render_images(world.z[lo:hi], world.img_rot, rng_px, noise=world.knobs.image_noise)
        for j, item in enumerate(range(lo, hi)):
            st = status.get(item)
            if st == "missing":
                continue
            if st == "not_image":
                data = NOT_IMAGE_BYTES
            else:
                buf = io.BytesIO()
                Image.fromarray(pix[j]).save(buf, format="JPEG", quality=90)
                data = buf.getvalue()
                if st == "truncated":
                    data = data[: len(data) // 3]
            with open(img_dir / f"{item}.jpg", "wb") as fh:
                fh.write(data)
            written += 1
    lines = ["item_id,status"] + [f"{i},{status[i]}" for i in sorted(status)]
    manifest = out_dir / "item_images_manifest.csv"
    atomic_write_text(manifest, "\n".join(lines) + "\n")
    return {
        "images_dir": str(img_dir),
        "images_manifest": str(manifest),
        "images_written": written,
        "images_missing": int(n_missing),
        "images_corrupt": int(n_corrupt),
    }


def _remove_stale_images(out_dir: Path) -> bool:
    """Delete what :func:`write_images` wrote into ``out_dir`` on an earlier run (the
    ``<id>.jpg`` files, then ``item_images/`` if that leaves it empty, and the manifest): a run
    without images must not leave pictures of another seed's items. Other files are kept.
    Returns whether anything was removed."""
    removed = False
    img_dir = out_dir / "item_images"
    if img_dir.is_dir():
        for path in img_dir.glob("*.jpg"):
            if path.stem.isdigit() and path.is_file():
                path.unlink()
                removed = True
        with contextlib.suppress(OSError):  # not empty: someone else's files, keep them
            img_dir.rmdir()
            removed = True
    manifest = out_dir / "item_images_manifest.csv"
    if manifest.is_file():
        manifest.unlink()
        removed = True
    return removed


def read_image_manifest(out_dir: str | os.PathLike) -> dict[int, str]:
    """``item_images_manifest.csv`` -> {item_id: status} (only the bad items are listed)."""
    with open(Path(out_dir) / "item_images_manifest.csv", newline="", encoding="utf-8") as fh:
        return {int(r["item_id"]): r["status"] for r in csv.DictReader(fh)}


# --------------------------------------------------------------------------------- driver


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; no sklearn import."""
    y = np.asarray(y) > 0
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inv, cnt = np.unique(np.asarray(p), return_inverse=True, return_counts=True)
    end = np.cumsum(cnt)
    avg_rank = (end - cnt + 1 + end) / 2.0  # 1-based ranks start+1..end -> their mean
    rank_sum = float(avg_rank[inv][y].sum())
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def generate(
    out_dir: str | os.PathLike,
    preset: str = "demo",
    seed: int = 2025,
    images: bool = True,
    progress: bool = False,
    knobs: Knobs | None = None,
) -> dict[str, Any]:
    """Write a MicroLens-shaped dataset into ``out_dir``; returns a summary dict.

    ``knobs`` (:class:`Knobs`) changes the world's shape and signal strengths; the default
    is the demo data. The summary's ``knobs`` lists those that differ from the default.

    The summary holds the paths (``paths``), row counts and positive rates per split,
    history-length statistics, the cold-target share of valid/test, the oracle AUC of
    valid and test (``oracle_auc``), image counts and the elapsed seconds.
    """
    t0 = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    knobs = knobs or Knobs()
    world = _build_world(cfg, seed, knobs)

    def log(msg: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    # b0 from a pilot sample of train-like rows
    warm_train = _target_sampler(world, ~world.cold)
    pilot = _gen_rows(world, min(20_000, max(cfg.n_train, 2_000)), _rng(seed, 2), warm_train)
    world.b0 = _solve_b0(pilot.logit0, POSITIVE_RATE)

    paths = {s: str(out / f"{s}.parquet") for s in SPLITS}
    paths["item_info"] = str(out / "item_info.parquet")
    paths["oracle"] = str(out / "oracle.parquet")
    summary: dict[str, Any] = {"preset": preset, "seed": int(seed), "out_dir": str(out)}
    summary.update(n_items=cfg.n_items, n_users=cfg.n_users, b0=float(world.b0))
    summary["knobs"] = knobs.changed()

    atomic_write_parquet(_item_info_table(world), paths["item_info"], **PARQUET_OPTIONS)
    log("item_info written")

    oracle_tables = []
    train_targets = np.zeros(cfg.n_items, dtype=bool)
    stats: dict[str, dict[str, Any]] = {}
    all_lengths = []
    for split_idx, split in enumerate(SPLITS):
        n = cfg.rows(split)
        if split == "train":
            warm, cold = warm_train, None
        else:
            warm = _target_sampler(world, train_targets)
            cold = _target_sampler(world, world.cold)
        oracle, stats[split] = _write_split(
            world, split, split_idx, n, seed, (warm, cold), train_targets, paths, all_lengths
        )
        oracle_tables.append(oracle)
        log(f"{split} written ({n:,} rows, oracle AUC {stats[split]['oracle_auc']:.4f})")

    _write_oracle(oracle_tables, paths["oracle"])
    summary["splits"] = stats
    summary["oracle_auc"] = {s: stats[s]["oracle_auc"] for s in ("valid", "test")}
    summary["history_length"] = _length_stats(np.concatenate(all_lengths))
    summary["paths"] = paths
    if images:
        summary.update(write_images(world, out, seed))
        log("images written")
    elif _remove_stale_images(out):
        log(f"removed the images of an earlier run ({out / 'item_images'}, manifest)")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _write_oracle(tables: list[pa.Table], path: str) -> None:
    """``oracle.parquet``: every row's true click probability, the splits one after another."""
    atomic_write_parquet(
        pa.concat_tables(tables),
        path,
        compression="zstd",
        use_dictionary=["split"],
        column_encoding={"row": "DELTA_BINARY_PACKED", "p_true": "BYTE_STREAM_SPLIT"},
        row_group_size=ROW_GROUP_ROWS,
    )


def _length_stats(lengths: np.ndarray) -> dict[str, Any]:
    return {
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
    }


def _write_split(
    world: Any,
    split: str,
    split_idx: int,
    n: int,
    seed: int,
    samplers: tuple[Any, Any],
    train_targets: np.ndarray,
    paths: dict[str, str],
    all_lengths: list[np.ndarray],
) -> tuple[pa.Table, dict[str, Any]]:
    """Generate and write one split chunk by chunk (train marks its targets in
    ``train_targets`` and keeps its history lengths): (its oracle rows, its statistics)."""
    warm, cold = samplers
    batches, p_all, y_all, cold_rows = [], [], [], 0
    for chunk_idx, lo in enumerate(range(0, n, CHUNK_ROWS)):
        m = min(CHUNK_ROWS, n - lo)
        rng = _rng(seed, 3, split_idx, chunk_idx)
        rows = _gen_rows(world, m, rng, warm, cold)
        p = _sigmoid(rows.logit0 + world.b0)
        y = (rng.random(m) < p).astype(np.int64)
        if split == "train":
            train_targets[rows.item_id] = True
        else:
            cold_rows += int((~train_targets[rows.item_id]).sum())
        if split == "train":
            all_lengths.append(rows.lengths)
        batches.append(_split_batch(rows, y))
        p_all.append(p)
        y_all.append(y)
        del rows
    table = pa.Table.from_batches(batches, schema=SPLIT_SCHEMA)
    del batches
    atomic_write_parquet(table, paths[split], **PARQUET_OPTIONS)
    del table
    p_cat, y_cat = np.concatenate(p_all), np.concatenate(y_all)
    oracle = pa.table(
        {
            "split": pa.array(np.full(n, split, dtype=object), type=pa.string()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "p_true": pa.array(p_cat),
        },
        schema=ORACLE_SCHEMA,
    )
    stats: dict[str, Any] = {
        "rows": n,
        "positive_rate": float(y_cat.mean()),
        "oracle_auc": _auc(y_cat, p_cat),
    }
    if split != "train":
        stats["cold_target_share"] = cold_rows / n
    return oracle, stats


def id_levels_baseline_auc(
    data_dir: str | os.PathLike, c_values: tuple[float, ...] = (0.1, 1.0)
) -> dict[str, float]:
    """Valid AUC of a logistic regression on one-hot(item_id) + one-hot(levels) only.

    The planted signal needs history and content, so this model must stay clearly below the
    oracle. Returns ``{"C=<c>": auc, ..., "best": auc, "oracle": oracle valid AUC}``.
    """
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    d = Path(data_dir)
    n_items = pq.read_metadata(d / "item_info.parquet").num_rows
    cols = ["item_id", "likes_level", "views_level", "label"]
    tr = pq.read_table(d / "train.parquet", columns=cols)
    va = pq.read_table(d / "valid.parquet", columns=cols)

    def design(t: pa.Table) -> sp.csr_matrix:
        n = t.num_rows
        item = t["item_id"].to_numpy()
        likes = t["likes_level"].to_numpy()
        views = t["views_level"].to_numpy()
        col = np.stack([item, n_items + likes, n_items + 11 + views], axis=1).reshape(-1)
        row = np.repeat(np.arange(n), 3)
        return sp.csr_matrix((np.ones(3 * n), (row, col)), shape=(n, n_items + 22))

    x_tr, y_tr = design(tr), tr["label"].to_numpy()
    x_va, y_va = design(va), va["label"].to_numpy()
    out: dict[str, float] = {}
    for c in c_values:
        model = LogisticRegression(C=c, max_iter=200, solver="liblinear")
        model.fit(x_tr, y_tr)
        out[f"C={c}"] = _auc(y_va, model.predict_proba(x_va)[:, 1])
    out["best"] = max(out.values())
    oracle = pq.read_table(d / "oracle.parquet").to_pandas()
    p = oracle.loc[oracle["split"] == "valid", "p_true"].to_numpy()
    out["oracle"] = _auc(y_va, p)
    return out
