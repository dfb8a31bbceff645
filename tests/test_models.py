"""Layer and model tests: masks the right way round, padding never matters, inputs untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmctr.config.schema import (
    DatasetConfig,
    DCNv2Config,
    DINConfig,
    FeatureSpec,
    TransformerDCNConfig,
    TransformerDCNTAConfig,
)
from mmctr.data.dataset import ItemTable
from mmctr.models import build_model
from mmctr.models.layers import CrossNetV2, SequenceEncoder, TargetInterest, masked_mean

N_ITEMS, L = 50, 20


def _dataset() -> DatasetConfig:
    return DatasetConfig(
        dataset_id="unit",
        feature_cols=[
            FeatureSpec("user_id", "meta"),
            FeatureSpec("item_seq", "meta"),
            FeatureSpec("likes_level", "categorical", vocab_size=11),
            FeatureSpec("views_level", "categorical", vocab_size=11),
            FeatureSpec("item_id", "categorical", vocab_size=N_ITEMS, source="item"),
            FeatureSpec("item_tags", "sequence", max_len=5, vocab_size=30, source="item"),
            FeatureSpec(
                "item_emb_d128", "embedding", dtype="float", embedding_dim=8, source="item"
            ),
        ],
    )


def _items(seed: int = 0) -> ItemTable:
    rng = np.random.default_rng(seed)
    tags = rng.integers(1, 30, size=(N_ITEMS, 5))
    tags[:, :2] = 0
    emb = rng.normal(size=(N_ITEMS, 16)).astype(np.float32)
    tags[0], emb[0] = 0, 0
    return ItemTable(N_ITEMS, {"item_tags": tags, "item_emb_d128": emb})


def _batch(b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS, (b, L), generator=g)
    lengths = torch.tensor([3, 5, 8, 1, 17, 12][:b])
    pos = torch.arange(L).expand(b, L)
    seq = torch.where(pos >= L - lengths[:, None], seq, torch.zeros_like(seq))
    return {
        "item_id": torch.randint(1, N_ITEMS, (b,), generator=g),
        "item_seq": seq,
        "likes_level": torch.randint(1, 11, (b,), generator=g),
        "views_level": torch.randint(1, 11, (b,), generator=g),
    }


TDCN_TINY = dict(
    embedding_dim=8,
    num_heads=2,
    transformer_layers=1,
    dim_feedforward=16,
    first_k_cols=4,
    dcn_cross_layers=2,
    dcn_hidden_units=[16],
    mlp_hidden_units=[8],
)


def _tdcn(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransformerDCNConfig(**{**TDCN_TINY, **kw})
    return build_model(cfg, _dataset(), _items()).eval()


def _tdcn_ta(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    interest = dict(interest_heads=2, interest_head_dim=4, recency_buckets=6, id_dropout=0.2)
    cfg = TransformerDCNTAConfig(**{**TDCN_TINY, **interest, **kw})
    return build_model(cfg, _dataset(), _items()).eval()


MODELS = {
    "Transformer_DCN": _tdcn,
    "Transformer_DCN_TA": _tdcn_ta,
    "Transformer_DCN_TA (no transformer)": lambda: _tdcn_ta(transformer_layers=0),
    "DIN": lambda: build_model(
        DINConfig(embedding_dim=8, dnn_hidden_units=[16], attention_hidden_units=[8]),
        _dataset(),
        _items(),
    ).eval(),
    "DCNv2": lambda: build_model(
        DCNv2Config(embedding_dim=8, parallel_dnn_hidden_units=[16]), _dataset(), _items()
    ).eval(),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_history_content_changes_prediction_and_padding_does_not(name):
    model = MODELS[name]()
    batch = _batch()
    with torch.no_grad():
        base = model(batch)
        assert base.shape == (6,) and torch.isfinite(base).all()
        # change one REAL history item of row 1 (length 5): its prediction must move
        changed = {k: v.clone() for k, v in batch.items()}
        changed["item_seq"][1, -2] = (changed["item_seq"][1, -2] % (N_ITEMS - 1)) + 1
        out = model(changed)
        assert not torch.allclose(out[1], base[1])
        assert torch.equal(out[[0, 2, 3, 4, 5]], base[[0, 2, 3, 4, 5]])
        # extra leading padding (a wider left-padded history) must change nothing
        wider = dict(batch)
        wider["item_seq"] = torch.cat([torch.zeros(6, 30, dtype=torch.long), batch["item_seq"]], 1)
        assert torch.equal(model(wider), base)
        # trimmed padding (drop columns that are padding in every row) changes nothing either
        trimmed = dict(batch)
        trimmed["item_seq"] = batch["item_seq"][:, -17:]
        assert torch.equal(model(trimmed), base)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_never_mutate_the_callers_tensors(name):
    model = MODELS[name]().train()
    batch = _batch()
    before = {k: v.clone() for k, v in batch.items()}
    model(batch).sum().backward()
    for k in batch:
        assert torch.equal(batch[k], before[k]), k


def test_sequence_encoder_ignores_padding_content_and_attends_to_real_items():
    """Would have caught the peers' bug: with mask = (seq > 0) passed as src_key_padding_mask
    the encoder attends ONLY to padding, so garbage at padding positions changes the output."""
    torch.manual_seed(0)
    enc = SequenceEncoder(
        item_dim=4,
        num_heads=1,
        num_layers=1,
        dim_feedforward=8,
        dropout=0.0,
        first_k_cols=3,
        concat_max_pool=True,
        length_chunks=False,
    ).eval()
    b, w = 2, 6
    history = torch.randn(b, w, 4)
    target = torch.randn(b, 4)
    pad = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    pad_before = pad.clone()
    with torch.no_grad():
        out = enc(history, target, pad)
        garbage = history.clone()
        garbage[pad] = torch.randn(int(pad.sum()), 4) * 100
        assert torch.equal(enc(garbage, target, pad), out)
        # a real item influences the readout of the OTHER real positions (attention works)
        other = history.clone()
        other[0, 3] += 1.0
        moved = enc(other, target, pad)
        tok = 2 * 4
        # row 0's last position (index 5) is the 3rd of first_k_cols=3 -> slice [2*tok, 3*tok)
        assert not torch.allclose(moved[0, 2 * tok : 3 * tok], out[0, 2 * tok : 3 * tok])
        assert torch.equal(moved[1], out[1])
        # the peers' inverted mask WOULD see the garbage: prove the test has teeth
        inverted = enc(garbage, target, ~pad)
        assert not torch.allclose(inverted, enc(history, target, ~pad))
    assert torch.equal(pad, pad_before)


@pytest.mark.parametrize("min_chunk_width", [1, 4])
def test_length_chunking_is_exact(min_chunk_width):
    """Chunks narrower than first_k_cols (4 here) too: their readout is left-padded."""
    torch.manual_seed(0)
    kw = dict(item_dim=4, num_heads=2, num_layers=2, dim_feedforward=8, dropout=0.0, first_k_cols=4)
    plain = SequenceEncoder(**kw, length_chunks=False).eval()
    chunked = SequenceEncoder(**kw, length_chunks=True, min_chunk_width=min_chunk_width).eval()
    chunked.load_state_dict(plain.state_dict())
    b, w = 9, 12
    lengths = torch.tensor([1, 2, 3, 4, 5, 8, 12, 2, 0])
    pad = torch.arange(w).expand(b, w) < (w - lengths[:, None])
    history, target = torch.randn(b, w, 4), torch.randn(b, 4)
    weights = torch.randn(b, chunked.out_dim)
    results = []
    for enc in (chunked, plain):  # outputs, and the gradients back to the inputs and weights
        h, t = history.clone().requires_grad_(True), target.clone().requires_grad_(True)
        out = enc(h, t, pad)
        (out * weights).sum().backward()
        results.append([out.detach(), h.grad, t.grad, *(p.grad for p in enc.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_length_chunking_default_is_on_outside_cuda_bf16(monkeypatch):
    """The default (None) chunks on the CPU, also under CPU bf16 autocast; it skips chunking
    only under CUDA bf16 autocast (launch-bound GPU), which this check cannot reach on a CPU."""
    torch.manual_seed(0)
    kw = dict(item_dim=4, num_heads=1, num_layers=1, dim_feedforward=8, dropout=0.0, first_k_cols=2)
    enc = SequenceEncoder(**kw).eval()
    assert enc.length_chunks is None
    calls = []
    real = SequenceEncoder._encode
    monkeypatch.setattr(
        SequenceEncoder, "_encode", lambda self, t, p: calls.append(t.shape[1]) or real(self, t, p)
    )
    lengths = torch.tensor([1, 2, 8, 12])
    pad = torch.arange(12).expand(4, 12) < (12 - lengths[:, None])
    with torch.no_grad():
        enc(torch.randn(4, 12, 4), torch.randn(4, 4), pad)
        assert sorted(calls) == [1, 2, 8, 12]  # chunks of lengths 1, 2, 5..8, 9..16 -> 12
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enc(torch.randn(4, 12, 4), torch.randn(4, 4), pad)
        assert len(calls) == 4


def test_empty_history_gives_finite_output():
    model = _tdcn()
    batch = _batch()
    batch["item_seq"] = torch.zeros_like(batch["item_seq"])
    with torch.no_grad():
        assert torch.isfinite(model(batch)).all()


def test_crossnet_v2_matches_hand_computation():
    net = CrossNetV2(2, num_layers=1)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        net.layers[0].bias.copy_(torch.tensor([0.5, 1.0]))
    x = torch.tensor([[1.0, 3.0]])
    # W x + b = [1*1 + 2*3 + 0.5, -3 + 1] = [7.5, -2]; x0 * that + x = [7.5 + 1, -6 + 3]
    torch.testing.assert_close(net(x), torch.tensor([[8.5, -3.0]]))


def test_low_rank_crossnet_shapes_and_grad():
    net = CrossNetV2(12, num_layers=2, low_rank=3, num_experts=2)
    x = torch.randn(5, 12, requires_grad=True)
    y = net(x)
    assert y.shape == (5, 12)
    y.sum().backward()
    assert x.grad is not None


def test_low_rank_crossnet_is_fuxictr_crossnetmix():
    """Per sample and expert, in FuxiCTR's CrossNetMix order: v = tanh(V^T x), v = tanh(C v),
    expert = x0 * (U v + b); gates softmax(g_e(x)) mix the experts; x += mixture."""
    torch.manual_seed(0)
    d, r, e, layers = 6, 2, 3, 2
    net = CrossNetV2(d, num_layers=layers, low_rank=r, num_experts=e).double()
    with torch.no_grad():
        for b in net.bias:
            b.normal_()
    x0 = torch.randn(4, d, dtype=torch.float64)
    want = []
    for row in x0:
        x = row.clone()
        for i in range(layers):
            experts, gates = [], []
            for k in range(e):
                v = torch.tanh(net.V[i][k].T @ x)
                v = torch.tanh(net.C[i][k] @ v)
                experts.append(row * (net.U[i][k] @ v + net.bias[i]))
                gates.append(net.gates[k].weight[0] @ x)
            w = torch.softmax(torch.stack(gates), 0)
            x = sum(w[k] * experts[k] for k in range(e)) + x
        want.append(x)
    torch.testing.assert_close(net(x0), torch.stack(want))
    assert [tuple(p.shape) for p in (net.U[0], net.V[0], net.C[0])] == [(e, d, r)] * 2 + [(e, r, r)]


def test_prelu_and_softmax_are_fuxictrs():
    """prelu learns one slope per unit, initialised to 0.1, over the last dimension (FuxiCTR's
    ``nn.PReLU(hidden_units, init=0.1)`` on its flattened inputs), and softmax normalises the
    last dimension; an MLP on (B, L, H) inputs gives what it gives row by row."""
    from torch import nn

    from mmctr.models.layers import MLP, get_activation

    act = get_activation("PReLU", 6)
    assert act.weight.shape == (6,) and torch.all(act.weight == 0.1)
    with torch.no_grad():
        act.weight.copy_(torch.linspace(-0.5, 0.5, 6))
    ref = nn.PReLU(6)  # torch's layer, channels on dimension 1 of a 2-d input
    ref.load_state_dict(act.state_dict())
    x = torch.randn(3, 4, 6)
    assert torch.equal(act(x), ref(x.reshape(-1, 6)).reshape(3, 4, 6))
    assert torch.equal(act(x[0]), ref(x[0]))
    with pytest.raises(ValueError, match="prelu needs the layer width"):
        get_activation("prelu")

    soft = get_activation("softmax")
    assert torch.allclose(soft(x).sum(-1), torch.ones(3, 4))

    torch.manual_seed(0)
    mlp = MLP(6, [5, 3], "prelu")
    assert [m.weight.shape for m in mlp.modules() if isinstance(m, nn.PReLU)] == [(5,), (3,)]
    assert torch.allclose(mlp(x), torch.stack([mlp(row) for row in x]))

    # DIN's attention MLP scores (B, L, 4D) histories: per-unit slopes there too
    torch.manual_seed(0)
    din = build_model(
        DINConfig(
            embedding_dim=8,
            dnn_hidden_units=[16],
            dnn_activations="prelu",
            attention_hidden_units=[8],
            attention_hidden_activations="PReLU",
            attention_output_activation="prelu",
        ),
        _dataset(),
        _items(),
    )
    din(_batch()).sum().backward()
    slopes = [m.weight for m in din.modules() if isinstance(m, nn.PReLU)]
    assert sorted(w.shape for w in slopes) == [(1,), (8,), (16,)]  # output, attention, DNN
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in slopes)


def test_masked_mean_ignores_padding():
    emb = torch.tensor([[[1.0], [100.0], [3.0]]])
    valid = torch.tensor([[True, False, True]])
    torch.testing.assert_close(masked_mean(emb, valid), torch.tensor([[2.0]]))
    assert masked_mean(emb, torch.zeros_like(valid)).item() == 0.0


def _zero_block_input(b: int, width: int, start: int, zeros: torch.Tensor) -> torch.Tensor:
    x = torch.randn(b, width)
    cols = torch.arange(width).expand(b, width) - start
    return x.masked_fill((cols >= 0) & (cols < zeros[:, None]), 0.0)


@pytest.mark.parametrize("overhead_rows", [0, 3, 100])
def test_cross_network_skipping_zero_columns_equals_dense(overhead_rows):
    """Output, every parameter's gradient and x0's gradient outside the zero blocks match
    the dense layers; rows cover no zeros, part of the block, and all of it."""
    torch.manual_seed(0)
    b, width, start = 9, 23, 5
    zeros = torch.tensor([0, 4, 4, 8, 16, 18, 1, 0, 12])
    x0 = _zero_block_input(b, width, start, zeros)
    w_out = torch.randn(b, width)
    net = CrossNetV2(width, num_layers=3)
    net.group_overhead_rows = overhead_rows
    results = {}
    for skip in (False, True):
        net.skip_zeros = skip
        net.zero_grad()
        x = x0.clone().requires_grad_(True)
        y = net(x, zeros, start)
        (y * w_out).sum().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        results[skip] = y.detach(), grads, x.grad
    (y0, g0, gx0), (y1, g1, gx1) = results[False], results[True]
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-5)
    outside = x0 != 0
    torch.testing.assert_close(gx1[outside], gx0[outside], rtol=1e-5, atol=1e-5)
    assert (y1 == 0)[x0 == 0].all()


def test_row_groups_cover_every_row_once_at_no_more_zeros_than_it_has():
    from mmctr.models.padded_cross import row_groups

    zeros = torch.tensor([5, 0, 5, 3, 9, 9, 9, 1, 0, 3])
    for overhead in (0, 1, 4, 100, 10_000):
        groups = row_groups(zeros, 10, overhead)
        rows = torch.cat([r for r, _ in groups])
        assert sorted(rows.tolist()) == list(range(len(zeros)))
        for r, z in groups:
            assert (zeros[r] >= z).all()
        assert [z for _, z in groups] == sorted(z for _, z in groups)  # widest first
    # no fixed cost: every count its own group; a huge one: one group, computed dense
    assert [z for _, z in row_groups(zeros, 10, 0)] == [0, 1, 3, 5, 9]
    assert [z for _, z in row_groups(zeros, 10, 10_000)] == [0]
    # the model's choice for a 9-wide run: 3 rows at width 1 + 7 rows at width 10 costs
    # 1 * (3 + 4) + 100 * (7 + 4) = 1107 against 100 * (10 + 4) = 1400 for one group
    assert [len(r) for r, _ in row_groups(zeros, 10, 4)][-1] == 3


def test_transformer_dcn_skips_the_readout_padding_exactly_and_by_default_on_cpu(monkeypatch):
    import mmctr.models.layers as layers

    model = _tdcn()
    assert model.cross.skip_zeros is None  # the default: skip on the CPU
    model.cross.group_overhead_rows = 0
    calls = []
    real = layers.cross_skipping_zeros
    monkeypatch.setattr(
        layers, "cross_skipping_zeros", lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    )
    batch = _batch()
    results = {}
    for skip in (None, False):
        model.cross.skip_zeros = skip
        model.zero_grad()
        y = model(batch)
        (y * torch.arange(1.0, 7.0)).sum().backward()
        results[skip] = y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(calls) == 1  # skipped once, with the readout's zero columns per row:
    d = model.sequence.d_model  # lengths 3, 5, 8, 1, 17, 12 with k = 4
    assert calls[0].tolist() == [1 * d, 0, 0, 3 * d, 0, 0]
    torch.testing.assert_close(results[None][0], results[False][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[None][1][name], grad, rtol=1e-5, atol=1e-6)


def test_cross_skipping_under_cpu_bf16_autocast_stays_close_to_dense():
    torch.manual_seed(0)
    b, width, start = 8, 40, 4
    zeros = torch.tensor([0, 8, 16, 24, 32, 36, 8, 0])
    x0 = _zero_block_input(b, width, start, zeros)
    net = CrossNetV2(width, num_layers=2)
    out = {}
    for skip in (False, True):
        net.skip_zeros = skip
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x0, zeros, start)
        y.float().sum().backward()
        out[skip] = y.float().detach(), net.layers[0].weight.grad.clone()
    assert out[True][1].dtype == torch.float32
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=0.05, atol=0.1)


def test_din_training_with_dice_is_unchanged_by_extra_padding(monkeypatch):
    """Dice's batch statistics see the real items only: a batch with more left padding (as
    an untrimmed batch on an accelerator) trains to the same logits."""
    import mmctr.models.base as model_base

    monkeypatch.setattr(model_base, "trim_leading_padding", lambda seq, keep_at_least=1: seq)
    torch.manual_seed(0)
    cfg = DINConfig(embedding_dim=8, dnn_hidden_units=[16], attention_hidden_units=[8])
    model = build_model(cfg, _dataset(), _items()).train()
    assert model.attention.batch_stats  # Dice in the attention MLP (the default)
    batch = _batch()
    padded = dict(batch, item_seq=torch.nn.functional.pad(batch["item_seq"], (30, 0)))
    torch.testing.assert_close(model(padded), model(batch), rtol=1e-5, atol=1e-6)


def test_cross_skipping_refuses_a_second_backward_clearly():
    net = CrossNetV2(12, num_layers=1)
    x0 = _zero_block_input(4, 12, 2, torch.tensor([0, 4, 4, 8]))
    y = net(x0.requires_grad_(True), torch.tensor([0, 4, 4, 8]), 2).sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="skip_zeros = False"):
        y.backward()


def test_cross_skipping_keeps_float64_gradients_exact():
    """The backward raises bf16 gradients to float32 but keeps float64 (a model.double())."""
    torch.manual_seed(0)
    zeros = torch.tensor([0, 4, 8, 8])
    x0 = _zero_block_input(4, 16, 3, zeros).double()
    net = CrossNetV2(16, num_layers=2).double()
    grads = []
    for skip in (False, True):
        net.skip_zeros = skip
        net.zero_grad()
        net(x0, zeros, 3).pow(2).sum().backward()
        grads.append(net.layers[0].weight.grad.clone())
    assert grads[1].dtype == torch.float64
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
    outs = []  # autocast leaves float64 alone, and so does the skipping path
    for skip in (False, True):
        net.skip_zeros = skip
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(net(x0, zeros, 3))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)


def test_din_trains_on_a_batch_with_a_single_real_item():
    """Dice's BatchNorm cannot train on one row: with one real item in the whole batch the
    attention scores every position instead of failing."""
    torch.manual_seed(0)
    cfg = DINConfig(embedding_dim=8, dnn_hidden_units=[16], attention_hidden_units=[8])
    model = build_model(cfg, _dataset(), _items()).train()
    batch = _batch(2)
    batch["item_seq"] = torch.zeros_like(batch["item_seq"])
    batch["item_seq"][0, -1] = 5
    assert torch.isfinite(model(batch)).all()


def test_target_interest_reads_only_real_items_and_counts_age_from_the_end():
    torch.manual_seed(0)
    ti = TargetInterest(6, num_heads=2, head_dim=3, recency_buckets=4)
    with torch.no_grad():
        ti.recency.normal_()
    hist, target = torch.randn(3, 5, 6), torch.randn(3, 6)
    pad = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = ti(hist, target, pad)
    assert out.shape == (3, ti.out_dim) == (3, 2 * (2 * 3 + 3))
    noisy = hist.clone()
    noisy[pad] = 1e6  # padding content must not matter
    torch.testing.assert_close(ti(noisy, target, pad), out, rtol=0, atol=0)
    # row 2 has no real item: zeros, not NaN
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    # the same items with more left padding: same ages, same output
    wide_h = torch.cat([torch.randn(3, 4, 6), hist], 1)
    wide_p = torch.cat([torch.ones(3, 4, dtype=torch.bool), pad], 1)
    torch.testing.assert_close(ti(wide_h, target, wide_p), out)
    # with one real item, the attended and max and mean similarity are that item's
    sim = out[1].view(2, 9)[:, 6:]
    torch.testing.assert_close(sim[:, 0], sim[:, 1])
    torch.testing.assert_close(sim[:, 1], sim[:, 2])
    # changing the recency bias of age 0 moves row 0 (3 real items), not row 1 (1 item)
    with torch.no_grad():
        ti.recency[:, 0] += 3.0
    moved = ti(hist, target, pad)
    assert not torch.allclose(moved[0], out[0])
    torch.testing.assert_close(moved[1], out[1])


def test_id_dropout_acts_only_while_training():
    model = _tdcn_ta(id_dropout=0.5)
    batch = _batch()
    with torch.no_grad():
        a, b = model(batch), model(batch)
        assert torch.equal(a, b)  # eval: deterministic, no dropout
        model.train()
        torch.manual_seed(1)
        c = model(batch)
        torch.manual_seed(2)
        d = model(batch)
    assert not torch.allclose(c, d)


def test_transformer_dcn_still_needs_its_transformer():
    from mmctr.config.loader import ConfigError

    with pytest.raises(ConfigError, match="transformer_layers must be at least 1"):
        _tdcn(transformer_layers=0)


def test_models_start_from_fuxictrs_initialisation():
    model = _tdcn_ta()
    emb = model.item_encoder.embeddings["item_id"].weight
    assert emb.std().item() == pytest.approx(1e-4, rel=0.2)
    assert torch.equal(emb[0], torch.zeros_like(emb[0]))  # padding row
    for m in model.modules():
        if type(m) is torch.nn.Linear and m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    torch.manual_seed(0)
    cfg = TransformerDCNConfig(embedding_dim=8, num_heads=2, embedding_initializer="torch_default")
    old = build_model(cfg, _dataset(), _items())
    assert old.item_encoder.embeddings["item_id"].weight.std().item() == pytest.approx(1, rel=0.2)


def test_embedding_initializer_accepts_fuxictrs_strings_only():
    from mmctr.config.schema import embedding_init_std

    assert embedding_init_std("partial(nn.init.normal_, std=1e-4)") == 1e-4
    assert embedding_init_std("partial(torch.nn.init.normal_,std=0.01)") == 0.01
    assert embedding_init_std("torch_default") is None
    with pytest.raises(ValueError, match="not an embedding_initializer"):
        embedding_init_std("nn.init.xavier_normal_")


def test_history_dropout_keeps_a_left_padded_subset_in_order_while_training_only():
    model = _tdcn_ta(history_dropout=0.5).train()
    batch = _batch()
    before = batch["item_seq"].clone()
    torch.manual_seed(0)
    seq = model.drop_history(batch)["item_seq"]
    assert torch.equal(batch["item_seq"], before)  # the caller's batch is untouched
    for row, kept in zip(before, seq):
        real = row[row != 0].tolist()
        left = kept[kept != 0].tolist()
        n = len(left)
        assert torch.equal(kept[: len(kept) - n], torch.zeros(len(kept) - n, dtype=kept.dtype))
        it = iter(real)  # a subsequence of the real items, in their order
        assert all(any(x == y for y in it) for x in left)
    assert (seq != 0).sum() < (before != 0).sum()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
