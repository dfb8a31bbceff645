"""Stage 1 (generate_embeddings): a tiny random CLIP saved to disk and loaded through the real
from_pretrained path, ~40 small images made here, no network."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFile

from mmctr.embedding import (
    EmbeddingError,
    ImageFeatureExtractor,
    build_random_clip,
    describe_model,
    fit_pca,
    generate_embeddings,
    load_image_model,
    load_pca,
    make_parallel,
    output_paths,
    project,
    save_pca,
)
from mmctr.embedding import pipeline as pipeline_mod
from mmctr.embedding.images import (
    CORRUPT,
    MISSING,
    OK,
    PADDING,
    ItemImageDataset,
    PixelNorm,
    collate_items,
    split_processor,
)

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 40
MISSING_IDS = {5, 6}
CORRUPT_IDS = {7, 8}  # 7: truncated JPEG, 8: a text file named 8.jpg
DIM = 8


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_clip(tmp_path_factory.mktemp("tiny_clip"), arch="tiny", seed=0)


def _truncated_jpeg(path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])  # header intact, scan data cut off


def make_items(root: Path, n: int = N_ITEMS) -> tuple[Path, Path]:
    """item_info.parquet (item_id, item_tags, likes, a placeholder item_emb_d128 in the middle)
    and an image folder: RGB/grey JPEGs and PNGs of 32-64 px, two missing, two corrupt, and a
    0.jpg that must be ignored (row 0 is padding)."""
    rng = np.random.default_rng(7)
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(n):
        if i in MISSING_IDS or i in CORRUPT_IDS:
            continue
        h, w = (int(x) for x in rng.integers(32, 65, size=2))
        if i % 7 == 3:  # greyscale
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(images / f"{i}.jpg")
        elif i % 5 == 4:  # RGBA PNG
            arr = rng.integers(0, 255, (h, w, 4), dtype=np.uint8)
            Image.fromarray(arr).save(images / f"{i}.png")
        else:
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(images / f"{i}.jpg", quality=90)
    _truncated_jpeg(images / "7.jpg", rng)
    (images / "8.jpg").write_text("this is not an image\n")
    (images / "notes.txt").write_text("ignored")
    tags = [[0, 0, 0, 0, 0]] + [[0, 0, i % 3, i % 5 + 1, i % 7 + 1] for i in range(1, n)]
    table = pa.table(
        {
            "item_id": pa.array(np.arange(n), pa.int64()),
            "item_emb_d128": pa.array([[0.5, 0.5]] * n, pa.list_(pa.float32())),
            "item_tags": pa.array(tags, pa.list_(pa.int64())),
            "likes": pa.array(rng.random(n), pa.float64()),
        }
    )
    info = root / "item_info.parquet"
    pq.write_table(table, info)
    return info, images


def _cached_raw(cache_dir: Path, n_shards: int) -> tuple[np.ndarray, np.ndarray]:
    feats, status = [], []
    for k in range(n_shards):
        with np.load(cache_dir / f"shard_{k:05d}.npz") as z:
            feats.append(z["features"])
            status.append(z["status"])
    return np.concatenate(feats), np.concatenate(status)


def _vectors(path: Path, column: str = "item_emb_d128") -> np.ndarray:
    return np.array(pq.read_table(path).column(column).to_pylist(), dtype=np.float32)


@pytest.mark.timeout(60)
def test_end_to_end_outputs(tiny_clip: Path, tmp_path: Path) -> None:
    info, images = make_items(tmp_path)
    before = pq.read_table(info)
    out = tmp_path / "out" / "item_info.parquet"
    s = generate_embeddings(
        info,
        images,
        model=str(tiny_clip),
        out=out,
        dim=DIM,
        batch_size=8,
        num_workers=2,
        shard_size=16,
        seed=2025,
        progress=False,
    )
    assert s["counts"] == {"ok": 35, "missing": 2, "corrupt": 2, "padding": 1}
    assert s["shards_computed"] == [0, 1, 2] and s["images_encoded"] == 35
    assert s["raw_dim"] == 256 and s["dim"] == DIM

    after = pq.read_table(out)
    # every other column and row unchanged, the column replaced in place
    assert after.column_names == before.column_names
    assert after.drop_columns(["item_emb_d128"]).equals(before.drop_columns(["item_emb_d128"]))
    assert after.schema.field("item_emb_d128").type == pa.list_(pa.float32())
    vec = _vectors(out)
    assert vec.shape == (N_ITEMS, DIM)
    zero_rows = {0} | MISSING_IDS | CORRUPT_IDS
    for i in range(N_ITEMS):
        assert (np.abs(vec[i]).sum() == 0) == (i in zero_rows), i
    assert pq.read_table(info).equals(before)  # the input is untouched when --out differs

    # status table
    status_path, pca_path = output_paths(out)
    import pandas as pd

    st = pd.read_csv(status_path, keep_default_na=False)
    assert st["item_id"].tolist() == list(range(N_ITEMS))
    got = dict(zip(st["item_id"], st["status"]))
    assert got[0] == "padding"
    assert {got[i] for i in MISSING_IDS} == {"missing"}
    assert {got[i] for i in CORRUPT_IDS} == {"corrupt"}
    assert sum(v == "ok" for v in got.values()) == 35
    errors = dict(zip(st["item_id"], st["error"]))
    assert errors[7] and errors[8] and not errors[1]

    # the saved PCA reproduces the written vectors from the cached raw features
    pca = load_pca(pca_path)
    assert (pca.dim, pca.raw_dim, pca.model, pca.seed) == (DIM, 256, str(tiny_clip), 2025)
    assert 0 < pca.explained_variance <= 1
    raw, cached_status = _cached_raw(Path(s["cache_dir"]), 3)
    ok = cached_status == OK
    assert ok.sum() == 35 and np.abs(raw[~ok]).sum() == 0
    np.testing.assert_array_equal(project(raw[ok], pca), vec[ok])


@pytest.mark.timeout(60)
def test_resume_recomputes_only_missing_or_changed_shards(tiny_clip: Path, tmp_path: Path):
    info, images = make_items(tmp_path)
    kw = dict(model=str(tiny_clip), dim=DIM, batch_size=8, num_workers=0, shard_size=16)
    kw["progress"] = False
    s1 = generate_embeddings(info, images, **kw)  # in place: --out defaults to --item-info
    cache = Path(s1["cache_dir"])
    assert cache.parent == tmp_path / ".emb_cache"
    v1 = _vectors(info)
    mtimes = {k: (cache / f"shard_{k:05d}.npz").stat().st_mtime_ns for k in range(3)}

    (cache / "shard_00001.npz").unlink()
    s2 = generate_embeddings(info, images, **kw)
    assert s2["shards_computed"] == [1] and s2["shards_reused"] == [0, 2]
    assert s2["images_encoded"] == 16  # items 16..31, all ok
    for k in (0, 2):
        assert (cache / f"shard_{k:05d}.npz").stat().st_mtime_ns == mtimes[k]
    np.testing.assert_allclose(_vectors(info), v1, atol=1e-5)

    # an image that changes (size / mtime) re-encodes its shard only
    arr = np.full((40, 40, 3), 200, dtype=np.uint8)
    Image.fromarray(arr).save(images / "33.jpg")
    s3 = generate_embeddings(info, images, **kw)
    assert s3["shards_computed"] == [2] and s3["shards_reused"] == [0, 1]

    # a fixed image (was corrupt) is picked up the same way
    Image.fromarray(arr).save(images / "8.jpg")
    s4 = generate_embeddings(info, images, **kw)
    assert s4["shards_computed"] == [0] and s4["counts"]["corrupt"] == 1

    s5 = generate_embeddings(info, images, force=True, **kw)
    assert s5["shards_computed"] == [0, 1, 2] and s5["images_encoded"] == 36


@pytest.mark.timeout(60)
def test_dataparallel_wrapper_is_what_runs(tiny_clip, tmp_path, monkeypatch):
    spec = describe_model(str(tiny_clip))
    model = load_image_model(spec)
    extractor = ImageFeatureExtractor(model)
    runner = make_parallel(extractor, [torch.device("cpu")])
    if not torch.cuda.is_available():
        assert isinstance(runner, torch.nn.DataParallel) and runner.module is extractor
    pixels = torch.randn(3, 3, 64, 64)
    out = runner(pixels)
    assert out.shape == (3, 256) and out.dtype == torch.float32
    # the wrapper returns the projected embedding: pooler_output of get_image_features
    from transformers import CLIPModel

    full = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    with torch.inference_mode():
        ref = full.get_image_features(pixel_values=pixels)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    # in the pipeline every model call goes through DataParallel -> the wrapper's forward
    calls = {"dp": 0, "wrapper": []}
    dp_forward = torch.nn.DataParallel.forward
    wrapper_forward = ImageFeatureExtractor.forward

    def spy_dp(self, *a, **k):
        calls["dp"] += 1
        return dp_forward(self, *a, **k)

    def spy_wrapper(self, pixel_values):
        calls["wrapper"].append(type(self))
        return wrapper_forward(self, pixel_values)

    monkeypatch.setattr(torch.nn.DataParallel, "forward", spy_dp)
    monkeypatch.setattr(ImageFeatureExtractor, "forward", spy_wrapper)
    info, images = make_items(tmp_path)
    s = generate_embeddings(
        info,
        images,
        model=str(tiny_clip),
        out=tmp_path / "o.parquet",
        dim=DIM,
        batch_size=10,
        num_workers=0,
        progress=False,
    )
    assert s["images_encoded"] == 35
    assert len(calls["wrapper"]) == 4  # 4 batches of 10, each with ok images
    assert set(calls["wrapper"]) == {ImageFeatureExtractor}
    if not torch.cuda.is_available():
        assert calls["dp"] == 4


@pytest.mark.timeout(60)
def test_corrupt_files_are_flagged_without_hanging(tiny_clip, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _truncated_jpeg(tmp_path / "1.jpg", rng)
    (tmp_path / "2.jpg").write_text("<html>not an image</html>")
    (tmp_path / "3.jpg").write_bytes(b"")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "4.jpg")
    paths = [str(tmp_path / f"{i}.jpg") for i in range(5)]
    paths[0] = str(tmp_path / "4.jpg")  # item 0 is padding whatever its file
    paths.append(None)
    processor = describe_model(str(tiny_clip)).processor
    # another library may have switched truncated loading on; we must not inherit it
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    ds = ItemImageDataset([0, 1, 2, 3, 4, 5], paths, processor)
    samples = [ds[i] for i in range(len(ds))]
    assert [s[2] for s in samples] == [PADDING, CORRUPT, CORRUPT, CORRUPT, OK, MISSING]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    assert "truncated" in samples[1][3].lower() or "OSError" in samples[1][3]

    batch = collate_items(samples)
    assert batch.item_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert batch.pixel_values.shape == (1, 3, 64, 64)  # only the ok row
    ref = processor(images=Image.open(tmp_path / "4.jpg").convert("RGB"), return_tensors="np")
    np.testing.assert_allclose(batch.pixel_values[0].numpy(), ref["pixel_values"][0], atol=1e-6)


@pytest.mark.timeout(60)
def test_model_errors_are_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # no network here: offline mode makes the hub fail at once instead of retrying
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmbeddingError, match=r"not a local folder.*--model clip_dir"):
        describe_model("mmctr-tests/no-such-clip")
    with pytest.raises(EmbeddingError, match="no such folder"):
        describe_model(str(tmp_path / "missing" / "clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingError, match="config.json"):
        describe_model(str(tmp_path / "empty"))


def test_pca_checks_and_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(EmbeddingError, match=r"--dim 8 .* only 5 items"):
        fit_pca(rng.normal(size=(5, 32)), 8, 0)
    with pytest.raises(EmbeddingError, match="feature width 32"):
        fit_pca(rng.normal(size=(100, 32)), 64, 0)
    raw = rng.normal(size=(50, 32)).astype(np.float32)
    a, b = fit_pca(raw, 8, 1, model="m"), fit_pca(raw, 8, 1, model="m")
    np.testing.assert_array_equal(a.components, b.components)  # deterministic
    save_pca(a, tmp_path / "p.npz")
    c = load_pca(tmp_path / "p.npz")
    np.testing.assert_array_equal(project(raw, a), project(raw, c))
    assert c.model == "m" and c.n_fit == 50 and c.raw_dim == 32
    from sklearn.decomposition import PCA

    ref = PCA(8, svd_solver="full").fit(raw.astype(np.float64)).transform(raw)
    np.testing.assert_allclose(project(raw, c), ref, atol=1e-4)


def test_projection_of_a_row_does_not_depend_on_the_other_rows() -> None:
    """--pca's bit-for-bit promise at its root: one more (or one fewer) item never moves
    another item's vector, for any number of rows (a BLAS product's blocking would)."""
    rng = np.random.default_rng(3)
    # rank 6 in 64-d, as a random-weight CLIP's features nearly are: the trailing components
    # project to ~1e-9, where the float64 sum's last bits survive the cast to float32 (the
    # BLAS product this replaced failed here for 7 of these 10 sizes)
    raw = (rng.normal(size=(5000, 6)) @ rng.normal(size=(6, 64))).astype(np.float32)
    pca = fit_pca(raw, 16, 0)
    full = project(raw, pca)
    for m in (1, 2, 3, 7, 63, 64, 65, 999, 4097, 4999):
        np.testing.assert_array_equal(project(raw[:m], pca), full[:m])
    picked = rng.choice(5000, 777, replace=False)
    np.testing.assert_array_equal(project(raw[picked], pca), full[picked])


def test_cache_key_depends_on_model_and_settings(tiny_clip: Path, tmp_path: Path) -> None:
    other = build_random_clip(tmp_path / "other", arch="tiny", seed=1)
    a, b = describe_model(str(tiny_clip)), describe_model(str(other))
    assert a.fingerprint != b.fingerprint  # other weights
    assert a.fingerprint == describe_model(str(tiny_clip)).fingerprint
    proc = describe_model(str(other)).processor
    proc.size = {"shortest_edge": 48}
    proc.save_pretrained(other)
    assert describe_model(str(other)).fingerprint != b.fingerprint  # other image size
    assert pipeline_mod._cache_key(a, None) != pipeline_mod._cache_key(a, torch.bfloat16)


def test_output_vectors_are_checked_before_writing(tmp_path: Path) -> None:
    ids = np.arange(3)
    good = np.ones((3, 4), dtype=np.float32)
    good[0] = 0
    pipeline_mod._check_vectors(good, ids, tmp_path / "o.parquet", "emb")
    bad = good.copy()
    bad[2, 1] = np.nan
    with pytest.raises(EmbeddingError, match=r"o.parquet: emb would hold NaN/inf .* item 2"):
        pipeline_mod._check_vectors(bad, ids, tmp_path / "o.parquet", "emb")
    bad = good.copy()
    bad[0, 3] = 1
    with pytest.raises(EmbeddingError, match="row 0 .padding. is not all zero"):
        pipeline_mod._check_vectors(bad, ids, tmp_path / "o.parquet", "emb")


@pytest.mark.timeout(60)
def test_other_datasets_tag_vocabularies_are_not_refused(tiny_clip, tmp_path):
    """Stage 1 reads item_id and writes one column; it must not impose MicroLens's item_tags
    vocabulary (11,740) on a dataset with other tag ids (it used to, after encoding)."""
    info, images = make_items(tmp_path, n=140)  # >= 128 ok images: 128-d item_emb_d128
    table = pq.read_table(info)
    tags = [[0] * 5] + [[0, 0, 0, 20_000 + i, 3] for i in range(1, 140)]
    k = table.column_names.index("item_tags")
    table = table.set_column(k, "item_tags", pa.array(tags, pa.list_(pa.int64())))
    pq.write_table(table, info)
    s = generate_embeddings(info, images, model=str(tiny_clip), num_workers=0, progress=False)
    assert s["dim"] == 128 and s["counts"]["ok"] == 135
    after = pq.read_table(info)
    assert after.column("item_tags").equals(table.column("item_tags"))
    assert _vectors(info).shape == (140, 128)


def _write_ids(path: Path, ids: pa.Array) -> Path:
    pq.write_table(pa.table({"item_id": ids, "x": pa.array(range(len(ids)))}), path)
    return path


@pytest.fixture
def encoding_forbidden(monkeypatch):
    """Any image encoding fails the test: what it checks must come before that work."""

    def no_encoding(*a, **k):
        raise AssertionError("encoding started before the inputs were checked")

    monkeypatch.setattr(pipeline_mod, "_encode", no_encoding)


@pytest.mark.timeout(60)
def test_bad_item_ids_and_out_fail_before_any_encoding(tiny_clip, tmp_path, encoding_forbidden):
    _, images = make_items(tmp_path)
    kw = dict(model=str(tiny_clip), dim=DIM, num_workers=0, progress=False)
    cases = {
        "str": (pa.array([f"id{i}" for i in range(5)]), r"column item_id has type string"),
        "half": (pa.array(np.arange(5) + 0.5), r"holds double values such as 0.5"),
        "order": (pa.array([0, 2, 1, 3, 4]), r"row 1 has item_id 2; expected item_id == row"),
        "gap": (pa.array([0, 1, 2, 4, 5]), r"row 3 has item_id 4"),
        "null": (pa.array([0, 1, None, 3, 4], pa.int64()), r"1 nulls"),
    }
    for name, (ids, msg) in cases.items():
        path = _write_ids(tmp_path / f"{name}.parquet", ids)
        with pytest.raises(EmbeddingError, match=rf"--item-info .*{name}.parquet: .*{msg}"):
            generate_embeddings(path, images, out=tmp_path / "o.parquet", **kw)
    with pytest.raises(EmbeddingError, match="integer item ids"):
        generate_embeddings(tmp_path / "str.parquet", images, out=tmp_path / "o.parquet", **kw)

    # whole-valued floats (pandas writes them when a column once held NaN) are item ids
    table, ids = pipeline_mod._read_item_info(
        _write_ids(tmp_path / "f.parquet", pa.array(np.arange(5.0)))
    )
    assert ids.dtype == np.int64 and ids.tolist() == [0, 1, 2, 3, 4]

    ok = _write_ids(tmp_path / "ok.parquet", pa.array(np.arange(5)))
    (tmp_path / "outdir").mkdir()
    with pytest.raises(EmbeddingError, match=r"--out .*outdir is a directory"):
        generate_embeddings(ok, images, out=tmp_path / "outdir", **kw)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EmbeddingError, match=r"afile is a file, not a folder"):
        generate_embeddings(ok, images, out=tmp_path / "afile" / "o.parquet", **kw)


@pytest.mark.timeout(90)
def test_saved_pca_keeps_old_vectors_when_items_are_added(tiny_clip, tmp_path):
    """New items: --pca projects them with the PCA the old vectors came from, so the old
    items' vectors stay bit for bit; without it a refit never loses the previous PCA."""
    info, images = make_items(tmp_path, n=60)
    full = pq.read_table(info)
    pq.write_table(full.slice(0, 40), info)
    kw = dict(model=str(tiny_clip), dim=DIM, shard_size=16, num_workers=0, progress=False)
    s1 = generate_embeddings(info, images, **kw)
    old = _vectors(info)
    pca_path = Path(s1["pca_file"])
    pca_bytes = pca_path.read_bytes()
    assert s1["pca_source"] == "fit" and s1["pca_previous"] is None

    pq.write_table(full, info)  # 20 new items
    kw.pop("dim")  # the width comes from the PCA file
    s2 = generate_embeddings(info, images, pca=pca_path, **kw)
    new = _vectors(info)
    assert new.shape == (60, DIM) and s2["dim"] == DIM
    assert np.array_equal(new[:40], old)  # bit-identical
    assert np.abs(new[40:]).sum() > 0 and s2["pca_source"] == str(pca_path)
    assert pca_path.read_bytes() == pca_bytes and s2["pca_previous"] is None
    assert not pca_path.with_name("item_info.pca.prev.npz").exists()

    # a plain rerun refits (every vector moves) but keeps the previous PCA beside it
    s3 = generate_embeddings(info, images, dim=DIM, **kw)
    prev = pca_path.with_name("item_info.pca.prev.npz")
    assert s3["pca_previous"] == str(prev) and prev.read_bytes() == pca_bytes
    assert not np.array_equal(_vectors(info)[:40], old)
    # ... from which the old vectors come back exactly
    generate_embeddings(info, images, pca=prev, **kw)
    assert np.array_equal(_vectors(info)[:40], old)
    # an unchanged refit leaves the files alone
    s5 = generate_embeddings(info, images, dim=DIM, **kw)
    s6 = generate_embeddings(info, images, dim=DIM, **kw)
    assert s5["pca_previous"] is not None and s6["pca_previous"] is None


@pytest.mark.timeout(60)
def test_saved_pca_that_does_not_fit_is_refused_before_encoding(
    tiny_clip, tmp_path, encoding_forbidden
):
    info, images = make_items(tmp_path)
    rng = np.random.default_rng(0)
    kw = dict(model=str(tiny_clip), num_workers=0, progress=False, out=tmp_path / "o.parquet")
    narrow = tmp_path / "narrow.npz"
    save_pca(fit_pca(rng.normal(size=(20, 32)), DIM, 0, model=str(tiny_clip)), narrow)
    with pytest.raises(EmbeddingError, match=r"--pca .*narrow.npz projects 32-d .* 256-d"):
        generate_embeddings(info, images, pca=narrow, **kw)
    other = tmp_path / "other.npz"
    save_pca(fit_pca(rng.normal(size=(20, 256)), DIM, 0, model="openai/clip-vit-large"), other)
    with pytest.raises(EmbeddingError, match=r"fit on the features of model 'openai/clip-vit-l"):
        generate_embeddings(info, images, pca=other, **kw)
    same = tmp_path / "same.npz"
    moved = f"/elsewhere/{tiny_clip.name}"  # the same model folder, moved: accepted
    save_pca(fit_pca(rng.normal(size=(20, 256)), DIM, 0, model=moved), same)
    with pytest.raises(EmbeddingError, match=rf"--dim 4 does not match .*same.npz.* {DIM}-d"):
        generate_embeddings(info, images, pca=same, dim=4, **kw)
    with pytest.raises(AssertionError, match="encoding started"):
        generate_embeddings(info, images, pca=same, **kw)
    with pytest.raises(EmbeddingError, match=r"--pca .*nothing.npz: no such file"):
        generate_embeddings(info, images, pca=tmp_path / "nothing.npz", **kw)
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(EmbeddingError, match=r"junk.npz: cannot read it as a PCA file"):
        generate_embeddings(info, images, pca=tmp_path / "junk.npz", **kw)


def test_atomic_writes_follow_a_symlink(tmp_path: Path) -> None:
    from mmctr.utils import atomic_write_parquet, atomic_write_text

    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "item_info.parquet"
    real.write_text("old")
    link = tmp_path / "item_info.parquet"
    link.symlink_to(real)
    atomic_write_parquet(pa.table({"a": [1, 2]}), link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert pq.read_table(real).column("a").to_pylist() == [1, 2]
    rel = tmp_path / "rel.txt"
    rel.symlink_to(Path("store") / "t.txt")  # relative and dangling: creates the target
    atomic_write_text(rel, "new")
    assert rel.is_symlink() and (tmp_path / "store" / "t.txt").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "item_info.parquet",
        "t.txt",
    ]  # no temp files left


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "generate_embeddings_cli", ROOT / "generate_embeddings.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(60)
def test_cli(tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mmctr.cli.common import run_cli

    cli = _load_script()
    info, images = make_items(tmp_path, n=140)  # >= 128 ok images: the default --dim 128
    base = ["--item-info", str(info), "--image-dir", str(images), "--model", str(tiny_clip)]
    assert cli.main([*base, "--num-workers", "2", "--batch-size", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(info) in printed and "item_info.status.csv" in printed
    assert "item_info.pca.npz" in printed and "ok 135" in printed
    assert "output check: passed" in printed and "(fit here)" in printed
    assert _vectors(info).shape == (140, 128)

    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: cli.main([*base, "--dim", "512", "--gpu", "-1"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: --dim 512 is larger than the model's feature width 256" in err

    # --pca: the saved PCA is used as it is; --out naming a folder fails at once
    pca = str(tmp_path / "item_info.pca.npz")
    assert cli.main([*base, "--pca", pca, "--num-workers", "0", "--no-progress"]) == 0
    assert f"(from --pca {pca})" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: cli.main([*base, "--out", str(tmp_path)]))
    assert exc.value.code == 2 and "is a directory" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, kwargs: dict, queue) -> None:
    # what torchrun sets for each worker; the pipeline takes it from there (gloo on the CPU)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    kwargs = dict(kwargs)
    if "image_dirs" in kwargs:  # one image folder per node
        kwargs["image_dir"] = kwargs.pop("image_dirs")[rank]
    try:
        queue.put((rank, generate_embeddings(**kwargs)))
    except BaseException as exc:
        queue.put((rank, repr(exc)))
        raise


def _two_ranks(kwargs: dict) -> dict:
    """``generate_embeddings(**kwargs)`` on two ranks as torchrun starts them, forked so that
    they skip the imports -> {rank: its summary}; both must exit 0."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, kwargs, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=80) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0], results
    return results


@pytest.mark.timeout(90)
def test_torchrun_ranks_share_the_work_and_match_one_process(tiny_clip, tmp_path):
    """Two ranks as torchrun starts them (RANK / WORLD_SIZE / LOCAL_RANK), forked so that
    they skip the imports: rank 1 encodes shard 1, rank 0 shards 0 and 2 and writes."""

    info, images = make_items(tmp_path)
    kw = dict(model=str(tiny_clip), dim=DIM, shard_size=16, num_workers=0, progress=False)
    single = generate_embeddings(info, images, out=tmp_path / "single.parquet", **kw)

    out = tmp_path / "dist" / "item_info.parquet"
    kw.update(item_info=info, image_dir=images, out=out, gpu=-1)
    results = _two_ranks(kw)
    assert results[1]["role"] == "worker" and results[1]["out"] is None
    assert results[1]["shards_computed"] == [1] and results[1]["images_encoded"] == 16
    assert results[0]["role"] == "main"
    # rank 0 reports the run: every rank's shards and images (it encoded 0 and 2 itself)
    assert results[0]["shards_computed"] == [0, 1, 2] and results[0]["shards_reused"] == []
    assert results[0]["images_encoded"] == single["images_encoded"] == 35
    assert [r["shards_computed"] for r in results[0]["per_rank"]] == [[0, 2], [1]]
    assert results[0]["images_per_s"] > 0
    assert results[0]["counts"] == single["counts"]
    np.testing.assert_allclose(_vectors(out), _vectors(tmp_path / "single.parquet"), atol=1e-5)


@pytest.mark.timeout(60)
def test_on_the_demo_data(tiny_clip: Path, tiny_data_copy: Path) -> None:
    """The demo generator's dataset: statuses match its manifest of bad images, the default
    128-d output passes the data contract, and the other columns are untouched."""
    import pandas as pd

    info = tiny_data_copy / "item_info.parquet"
    before = pq.read_table(info)
    s = generate_embeddings(
        info, tiny_data_copy / "item_images", model=str(tiny_clip), num_workers=2, progress=False
    )
    assert s["contract_check"] == "passed" and s["dim"] == 128
    after = pq.read_table(info)
    assert after.drop_columns(["item_emb_d128"]).equals(before.drop_columns(["item_emb_d128"]))
    manifest = pd.read_csv(tiny_data_copy / "item_images_manifest.csv")
    expected = {"missing": "missing", "truncated": "corrupt", "not_image": "corrupt"}
    st = pd.read_csv(output_paths(info)[0], keep_default_na=False).set_index("item_id")
    for item_id, kind in zip(manifest["item_id"], manifest["status"]):
        assert st.loc[item_id, "status"] == expected[kind], (item_id, kind)
    n_missing = int((manifest["status"] == "missing").sum())
    n_corrupt = len(manifest) - n_missing
    n_ok = before.num_rows - 1 - len(manifest)
    assert s["counts"] == {"ok": n_ok, "missing": n_missing, "corrupt": n_corrupt, "padding": 1}


def test_uint8_pixels_normalised_on_the_device_match_the_processor(tiny_clip, tmp_path):
    """The workers' uint8 path + PixelNorm gives the processor's own float32 input, for
    every kind of image in the test folder (grey, RGBA, odd sizes), and the features too."""
    spec = describe_model(str(tiny_clip))
    norm, why = split_processor(spec.processor)
    assert isinstance(norm, PixelNorm), why
    _, images = make_items(tmp_path)
    ids = [i for i in range(1, N_ITEMS) if i not in MISSING_IDS | CORRUPT_IDS]
    paths = [str(next(images.glob(f"{i}.*"))) for i in ids]
    whole = collate_items(
        [ItemImageDataset(ids, paths, spec.processor)[k] for k in range(len(ids))]
    )
    raw = collate_items(
        [ItemImageDataset(ids, paths, spec.processor, uint8=True)[k] for k in range(len(ids))]
    )
    assert raw.pixel_values.dtype == torch.uint8 and whole.pixel_values.dtype == torch.float32
    assert raw.pixel_values.element_size() * 4 == whole.pixel_values.element_size()
    torch.testing.assert_close(norm(raw.pixel_values), whole.pixel_values, atol=1e-5, rtol=0)
    extractor = ImageFeatureExtractor(load_image_model(spec), None, norm)
    torch.testing.assert_close(
        extractor(raw.pixel_values), extractor(whole.pixel_values), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(TypeError, match="PixelNorm"):
        ImageFeatureExtractor(load_image_model(spec))(raw.pixel_values)


def test_split_processor_falls_back_when_it_cannot_reproduce_the_processor(tiny_clip):
    spec = describe_model(str(tiny_clip))

    class NoKeywords:  # an image processor that knows nothing of do_rescale / do_normalize
        do_rescale, rescale_factor, do_normalize = True, 1 / 255, True
        image_mean, image_std = [0.5] * 3, [0.5] * 3

        def __call__(self, images, return_tensors="np"):
            return {"pixel_values": np.zeros((1, 3, 8, 8), np.float32)}

    class Wrong:  # claims CLIP's mean/std but normalises with others
        def __init__(self, p):
            self.p = p
            self.do_rescale, self.rescale_factor = True, p.rescale_factor
            self.do_normalize, self.image_mean, self.image_std = True, [0.1] * 3, [0.2] * 3

        def __call__(self, images, **kw):
            return self.p(images=images, **kw)

    norm, why = split_processor(NoKeywords())
    assert norm is None and "refused" in why
    norm, why = split_processor(Wrong(spec.processor))
    assert norm is None and "differs" in why
    norm, why = split_processor(object())
    assert norm is None and "no rescale" in why


# --------------------------------------------------------------------------- review fixes


@pytest.mark.timeout(90)
def test_pca_keeps_old_vectors_when_new_items_join_a_cached_shard(tiny_clip, tmp_path):
    """43 items, shards of 16, batches of 8: the last shard (32..42) ends in a batch of 3.
    17 new items make that shard stale; its old items must come from the cache (their files
    did not change), not be re-encoded in other batches (which moves their last bits)."""
    info, images = make_items(tmp_path, n=60)
    full = pq.read_table(info)
    pq.write_table(full.slice(0, 43), info)
    kw = dict(model=str(tiny_clip), shard_size=16, batch_size=8, num_workers=0, progress=False)
    s1 = generate_embeddings(info, images, dim=DIM, **kw)
    old = _vectors(info)
    raw_before, _ = _cached_raw(Path(s1["cache_dir"]), 3)

    pq.write_table(full, info)  # 17 new items: shard 2 gains 5, shard 3 is new
    s2 = generate_embeddings(info, images, pca=s1["pca_file"], **kw)
    assert np.array_equal(_vectors(info)[:43], old)  # bit for bit
    raw_after, _ = _cached_raw(Path(s1["cache_dir"]), 4)
    assert np.array_equal(raw_after[:43], raw_before)
    assert s2["shards_computed"] == [2, 3] and s2["shards_reused"] == [0, 1]
    assert s2["items_reused"] == 11  # shard 2's old items 32..42
    assert s2["images_encoded"] == 17  # items 43..59 (all ok), nothing else

    # an edited image is re-encoded alone; the rest of its shard comes from the cache
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(images / "33.jpg")
    s3 = generate_embeddings(info, images, pca=s1["pca_file"], **kw)
    assert s3["shards_computed"] == [2] and s3["images_encoded"] == 1
    assert s3["items_reused"] == 15
    v3 = _vectors(info)
    assert np.flatnonzero((v3[:43] != old).any(axis=1)).tolist() == [33]
    # --force re-encodes everything
    s4 = generate_embeddings(info, images, pca=s1["pca_file"], force=True, **kw)
    assert s4["images_encoded"] == 55 and s4["items_reused"] == 0
    # items removed: the shortened shard is rewritten from the cache alone
    pq.write_table(full.slice(0, 40), info)
    s5 = generate_embeddings(info, images, pca=s1["pca_file"], **kw)
    assert s5["shards_computed"] == [2] and s5["shards_reused"] == [0, 1]
    assert s5["images_encoded"] == 0 and s5["items_reused"] == 8


@pytest.mark.timeout(60)
def test_outputs_are_committed_with_the_parquet_last(tiny_clip, tmp_path, monkeypatch):
    """A run killed while saving the PCA (or the status table) must leave the parquet as it
    was: the parquet is written last, so its vectors always match a saved PCA."""
    info, images = make_items(tmp_path)
    kw = dict(model=str(tiny_clip), shard_size=16, num_workers=0, progress=False)
    generate_embeddings(info, images, dim=DIM, **kw)
    status_path, pca_path = output_paths(info)
    before = {p: p.read_bytes() for p in (info, status_path, pca_path)}

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while saving the PCA")

    monkeypatch.setattr(pipeline_mod, "save_pca", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_embeddings(info, images, dim=4, **kw)  # a new PCA: every vector would move
    assert info.read_bytes() == before[info]
    assert status_path.read_bytes() == before[status_path]
    monkeypatch.undo()

    monkeypatch.setattr(pipeline_mod, "_status_table", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_embeddings(info, images, dim=4, **kw)
    assert info.read_bytes() == before[info]  # the PCA is new, the parquet still the old one
    prev = pca_path.with_name("item_info.pca.prev.npz")
    assert prev.read_bytes() == before[pca_path]  # ... and the PCA that made it is kept


@pytest.mark.timeout(60)
def test_pca_model_check_compares_model_content_not_folder_names(tiny_clip, tmp_path):
    import shutil

    a = build_random_clip(tmp_path / "a" / "clip", arch="tiny", seed=0)
    b = build_random_clip(tmp_path / "b" / "clip", arch="tiny", seed=1)  # same name, other model
    c = shutil.copytree(a, tmp_path / "c" / "renamed")  # the same model, another name
    info, images = make_items(tmp_path / "data", n=20)
    kw = dict(num_workers=0, progress=False, out=tmp_path / "data" / "o.parquet")
    s = generate_embeddings(info, images, model=str(a), dim=DIM, **kw)

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoding started")

    pipeline_mod._encode, real = no_encoding, pipeline_mod._encode
    try:
        with pytest.raises(EmbeddingError, match=r"fit on the features of model .*a/clip"):
            generate_embeddings(info, images, model=str(b), pca=s["pca_file"], **kw)
        with pytest.raises(AssertionError, match="encoding started"):  # accepted
            generate_embeddings(info, images, model=str(c), pca=s["pca_file"], **kw)
    finally:
        pipeline_mod._encode = real
    assert len(load_pca(s["pca_file"]).model_digest) == 64  # sha256 of the model's content


@pytest.mark.timeout(60)
def test_column_that_is_not_an_embedding_is_refused(tiny_clip, tmp_path, encoding_forbidden):
    info, images = make_items(tmp_path)
    kw = dict(model=str(tiny_clip), dim=DIM, num_workers=0, progress=False)
    kw["out"] = tmp_path / "o.parquet"
    with pytest.raises(EmbeddingError, match=r"--column item_id"):
        generate_embeddings(info, images, column="item_id", **kw)
    with pytest.raises(EmbeddingError, match=r"--column likes: .* type double, not a list of"):
        generate_embeddings(info, images, column="likes", **kw)
    with pytest.raises(EmbeddingError, match=r"--column item_tags: .* list<element: int64>"):
        generate_embeddings(info, images, column="item_tags", **kw)
    assert not (tmp_path / "o.parquet").exists()
    with pytest.raises(AssertionError, match="encoding started"):  # list<float>: replaced
        generate_embeddings(info, images, **kw)


@pytest.mark.timeout(60)
def test_cache_dir_that_cannot_be_a_folder_is_refused(tiny_clip, tmp_path, encoding_forbidden):
    info, images = make_items(tmp_path)
    kw = dict(model=str(tiny_clip), dim=DIM, num_workers=0, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EmbeddingError, match=r"--cache-dir .*afile is a file, not a folder"):
        generate_embeddings(info, images, cache_dir=tmp_path / "afile", **kw)
    with pytest.raises(EmbeddingError, match=r"--cache-dir .*afile.sub: cannot create"):
        generate_embeddings(info, images, cache_dir=tmp_path / "afile" / "sub", **kw)


def test_stale_shard_errors_say_which_case(tmp_path: Path) -> None:
    ids = np.arange(4)
    shard = pipeline_mod._Shard(0, 0, 4, "fp-a", tmp_path / "shard_00000.npz")
    with pytest.raises(EmbeddingError, match=r"shard_00000.npz does not exist.*shar"):
        pipeline_mod._read_shard(shard, "key", ids)
    z = np.zeros((4, 2), np.float32)
    pipeline_mod._write_shard(shard, "key", ids, z, np.zeros(4, np.int8), [""] * 4)
    other = pipeline_mod._Shard(0, 0, 4, "fp-b", shard.path)
    with pytest.raises(EmbeddingError, match=r"other image files .*fingerprint"):
        pipeline_mod._read_shard(other, "key", ids)
    with pytest.raises(EmbeddingError, match=r"another model"):
        pipeline_mod._read_shard(shard, "other-key", ids)


def test_column_width_that_contradicts_its_name_is_warned(tmp_path: Path) -> None:
    ids = np.arange(3)
    vec = np.ones((3, 64), dtype=np.float32)
    vec[0] = 0
    warn = pipeline_mod._check_vectors(vec, ids, tmp_path / "o.parquet", "item_emb_d128")
    assert warn is not None and "64" in warn and "d128" in warn
    assert pipeline_mod._check_vectors(vec, ids, tmp_path / "o.parquet", "item_emb_d64") is None
    assert pipeline_mod._check_vectors(vec, ids, tmp_path / "o.parquet", "emb") is None


@pytest.mark.timeout(90)
def test_torchrun_ranks_with_node_local_image_copies(tiny_clip, tmp_path):
    """Each node has its own copy of the image folder (same names and sizes, other mtimes):
    every rank keys its shards by rank 0's fingerprints, so rank 0 accepts them."""
    import shutil

    info, images = make_items(tmp_path)
    node1 = shutil.copytree(images, tmp_path / "images_node1", copy_function=shutil.copyfile)
    for f in node1.iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**11))
    kw = dict(model=str(tiny_clip), dim=DIM, shard_size=16, num_workers=0, progress=False)
    single = generate_embeddings(info, images, out=tmp_path / "single.parquet", **kw)

    out = tmp_path / "dist" / "item_info.parquet"
    kw.update(item_info=info, image_dirs=[images, node1], out=out, gpu=-1)
    kw["cache_dir"] = tmp_path / "shared_cache"
    results = _two_ranks(kw)
    assert results[0]["counts"] == single["counts"]
    np.testing.assert_allclose(_vectors(out), _vectors(tmp_path / "single.parquet"), atol=1e-5)
