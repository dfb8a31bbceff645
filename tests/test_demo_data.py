"""The demo generator: contract shape, planted signal, determinism, images (tiny preset)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmctr.data import demo
from mmctr.data.contract import validate_dataset
from mmctr.data.demo import PRESETS, generate, id_levels_baseline_auc, read_image_manifest

TINY = PRESETS["tiny"]
SPLIT_ROWS = {"train": TINY.n_train, "valid": TINY.n_valid, "test": TINY.n_test}
REPO = Path(__file__).resolve().parents[1]


def _seq_matrix(table: pa.Table, col: str) -> np.ndarray:
    arr = table.column(col).combine_chunks()
    return arr.flatten().to_numpy().reshape(table.num_rows, -1)


def test_tiny_passes_the_contract(tiny_dataset_config):
    validate_dataset(tiny_dataset_config, require_test_label=True)
    assert tiny_dataset_config.feature("item_id").vocab_size == TINY.n_items


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_split_files_follow_the_contract(tiny_data, split):
    t = pq.read_table(tiny_data / f"{split}.parquet")
    assert t.schema.names == [
        "user_id",
        "item_seq",
        "item_id",
        "likes_level",
        "views_level",
        "label",
    ]
    for col in ("user_id", "item_id", "likes_level", "views_level", "label"):
        assert t.schema.field(col).type == pa.int64(), col
    assert t.schema.field("item_seq").type == pa.list_(pa.int64())
    assert t.num_rows == SPLIT_ROWS[split]
    seq = _seq_matrix(t, "item_seq")
    assert seq.shape == (t.num_rows, 100)
    nz = seq != 0
    # left padding: once a real item appears, every later position is a real item
    assert not (nz[:, :-1] & ~nz[:, 1:]).any()
    assert nz[:, -1].all()  # most recent item LAST (never padding)
    assert seq.min() >= 0 and seq.max() <= TINY.n_items - 1
    item = t["item_id"].to_numpy()
    assert item.min() >= 1 and item.max() <= TINY.n_items - 1
    for col in ("likes_level", "views_level"):
        v = t[col].to_numpy()
        assert v.min() >= 1 and v.max() <= 10
        assert len(np.unique(v)) >= 8  # the levels really vary
    assert set(np.unique(t["label"].to_numpy())) == {0, 1}
    assert t["user_id"].to_numpy().min() >= 1


def test_item_info_follows_the_contract(tiny_data):
    t = pq.read_table(tiny_data / "item_info.parquet")
    assert t.schema.names == ["item_id", "item_tags", "item_emb_d128"]
    assert t.schema.field("item_id").type == pa.int64()
    assert t.schema.field("item_tags").type == pa.list_(pa.int64())
    assert t.schema.field("item_emb_d128").type == pa.list_(pa.float32())
    assert t.num_rows == TINY.n_items
    np.testing.assert_array_equal(t["item_id"].to_numpy(), np.arange(TINY.n_items))
    tags = _seq_matrix(t, "item_tags")
    emb = _seq_matrix(t, "item_emb_d128")
    assert tags.shape == (TINY.n_items, 5) and emb.shape == (TINY.n_items, 128)
    assert emb.dtype == np.float32
    assert not tags[0].any() and not emb[0].any()  # padding row
    real = tags[1:] != 0
    n_real = real.sum(axis=1)
    assert n_real.min() == 1 and n_real.max() == 5  # 1..5 real tags
    assert not (real[:, :-1] & ~real[:, 1:]).any()  # left-padded
    assert tags.max() <= TINY.n_tags_used < demo.TAG_VOCAB
    assert np.isfinite(emb).all()
    assert (np.abs(emb[1:]).sum(axis=1) > 0).all()


def test_history_length_statistics(tiny_data):
    seq = _seq_matrix(pq.read_table(tiny_data / "train.parquet", columns=["item_seq"]), "item_seq")
    lengths = (seq != 0).sum(axis=1)
    assert lengths.min() >= 3 and lengths.max() <= 100
    assert 5 <= np.median(lengths) <= 7
    assert 6.5 <= lengths.mean() <= 9.5
    # the distribution generator itself, on many draws: MicroLens' min 3 / median 6 / mean ~8
    big = demo.history_lengths(np.random.default_rng(0), 200_000)
    assert big.min() == 3 and big.max() == 100
    assert np.median(big) == 6 and 7.5 <= big.mean() <= 8.5


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_positive_ratio(tiny_data, split):
    y = pq.read_table(tiny_data / f"{split}.parquet", columns=["label"])["label"].to_numpy()
    assert 0.18 <= y.mean() <= 0.32


def test_oracle_table(tiny_data):
    o = pq.read_table(tiny_data / "oracle.parquet")
    assert o.schema == pa.schema(
        [("split", pa.string()), ("row", pa.int64()), ("p_true", pa.float64())]
    )
    split = np.asarray(o["split"].to_pylist())
    row = o["row"].to_numpy()
    p = o["p_true"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    for name, n in SPLIT_ROWS.items():
        m = split == name
        assert m.sum() == n
        np.testing.assert_array_equal(row[m], np.arange(n))
        y = pq.read_table(tiny_data / f"{name}.parquet", columns=["label"])["label"].to_numpy()
        # labels were drawn from p_true: calibrated on average, and p_true ranks them well
        assert abs(y.mean() - p[m].mean()) < 0.05
        assert demo._auc(y, p[m]) > 0.75


def test_cold_targets_in_valid_and_test(tiny_data):
    train_items = set(pq.read_table(tiny_data / "train.parquet")["item_id"].to_numpy().tolist())
    for split in ("valid", "test"):
        items = pq.read_table(tiny_data / f"{split}.parquet")["item_id"].to_numpy()
        cold = np.array([i not in train_items for i in items])
        assert 0.04 <= cold.mean() <= 0.18, split


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, preset="tiny", seed=11, images=False)
    generate(b, preset="tiny", seed=11, images=False)
    generate(c, preset="tiny", seed=12, images=False)
    names = ["train", "valid", "test", "item_info", "oracle"]
    for name in names:
        assert (a / f"{name}.parquet").read_bytes() == (b / f"{name}.parquet").read_bytes(), name
        assert (a / f"{name}.parquet").read_bytes() != (c / f"{name}.parquet").read_bytes(), name
    assert not (a / "item_images").exists()


def test_images_and_manifest(tiny_data):
    manifest = read_image_manifest(tiny_data)
    n_bad = {
        s: sum(v == s for v in manifest.values()) for s in ("missing", "truncated", "not_image")
    }
    assert n_bad["missing"] >= 1 and n_bad["truncated"] >= 1 and n_bad["not_image"] == 1
    assert len(manifest) <= max(6, 0.02 * TINY.n_items)
    img_dir = tiny_data / "item_images"
    for item in range(1, TINY.n_items):
        path = img_dir / f"{item}.jpg"
        status = manifest.get(item, "ok")
        if status == "missing":
            assert not path.exists()
            continue
        assert path.is_file()
        if status == "ok":
            with Image.open(path) as im:
                im.load()
                assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
        else:
            # truncated JPEG / HTML page saved as .jpg
            with pytest.raises(OSError), Image.open(path) as im:
                im.load()
    assert not (img_dir / "0.jpg").exists()


def test_images_encode_the_latent_content(tiny_data):
    """Block-mean colours of the JPEGs linearly predict the item's latent content."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_score

    world = demo._build_world(TINY, 2025)
    manifest = read_image_manifest(tiny_data)
    ids = [i for i in range(1, TINY.n_items) if i not in manifest]
    feats = []
    for i in ids:
        with Image.open(tiny_data / "item_images" / f"{i}.jpg") as im:
            px = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        feats.append(px.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3)).reshape(-1))
    x = np.stack(feats)
    z = world.z[ids] @ world.img_rot.T  # the image parameters
    r2 = cross_val_score(Ridge(alpha=1.0), x, z[:, :3], cv=3, scoring="r2").mean()
    assert r2 > 0.6  # the global colour carries its three parameters
    r2_all = cross_val_score(Ridge(alpha=1.0), x, world.z[ids], cv=3, scoring="r2").mean()
    assert r2_all > 0.3  # and together with the regions a good part of the whole latent


def test_planted_signal_beats_an_id_and_levels_model(tiny_data):
    res = id_levels_baseline_auc(tiny_data)
    assert res["oracle"] - res["best"] >= 0.05


def test_cli_writes_a_dataset(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_demo_data", REPO / "scripts" / "make_demo_data.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--preset", "tiny", "--out", str(tmp_path / "d"), "--seed", "3", "--no-images"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "oracle valid AUC" in out
    for name in ("train", "valid", "test", "item_info", "oracle"):
        assert (tmp_path / "d" / f"{name}.parquet").is_file()
    assert not (tmp_path / "d" / "item_images").exists()


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        generate(tmp_path, preset="huge")


def test_fast_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    p = np.round(rng.random(5000) + 0.3 * y, 2)  # many ties
    assert demo._auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(demo._auc(np.zeros(5), np.arange(5)))


def test_ceiling_script_reproduces_the_oracle_and_orders_the_ceilings(tiny_data):
    """scripts/demo_ceiling.py re-implements the click formula vectorised: with the true z it
    must give exactly the oracle's AUC (it would not if the formula drifted from the
    generator's), and revealing less of z must not score above the oracle."""
    from tests.conftest import TINY_SEED

    spec = importlib.util.spec_from_file_location(
        "demo_ceiling", REPO / "scripts" / "demo_ceiling.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.ceilings(
        tiny_data, tiny_data / "item_info.parquet", "item_emb_d128", "tiny", TINY_SEED
    )
    assert res["exact formula, true z"] == pytest.approx(res["oracle"], abs=1e-9)
    for key in ("embedding", "topic", "embedding + topic", "item part only"):
        assert 0.5 < res[key] < res["oracle"], key
    assert 0 < res["r2"]["embedding"] < res["r2"]["embedding + topic"] <= 1


def test_a_run_without_images_removes_the_old_images(tiny_data_copy, capsys):
    d = tiny_data_copy
    assert any((d / "item_images").glob("*.jpg")) and (d / "item_images_manifest.csv").is_file()
    (d / "notes.txt").write_text("mine")
    generate(d, preset="tiny", seed=12, images=False, progress=True)
    assert not (d / "item_images").exists() and not (d / "item_images_manifest.csv").exists()
    assert (d / "notes.txt").read_text() == "mine"  # only the generator's own files go
    assert "removed the images of an earlier run" in capsys.readouterr().out
    # a file of someone else's inside item_images/ keeps that folder
    (d / "item_images").mkdir()
    (d / "item_images" / "1.jpg").write_bytes(b"old")
    (d / "item_images" / "README").write_text("mine")
    generate(d, preset="tiny", seed=12, images=False)
    assert [p.name for p in (d / "item_images").iterdir()] == ["README"]
