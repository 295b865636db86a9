"""Standalone parameters (qembed.nn.Parameter(array, copy=...)), gradients
set from outside (p.grad = g), and torch CPU tensors stepped in place by
qembed's 8-bit optimizers (the CPU-offload recipe of the README)."""

import numpy as np
import pytest

import qembed
from qembed.nn import Parameter

RNG = np.random.default_rng(20261204)


def draw(shape, scale=1.0):
    # values over several orders of magnitude, signs mixed
    x = RNG.standard_normal(shape).astype(np.float32) * scale
    x.reshape(-1)[:: max(1, x.size // 17)] *= 1e-4
    return x


# --------------------------------------------------------------------------
# copy and wrap
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_copy_owns_its_values(dtype):
    src = draw((37, 5)).astype(dtype)
    p = Parameter(src, name="table")
    want = np.float32 if dtype == np.float64 else dtype
    assert p.dtype == want and p.shape == (37, 5) and p.is_standalone and not p.is_wrapped
    np.testing.assert_array_equal(p.data, src.astype(want))
    src[0, 0] = 123
    assert p.data[0, 0] != 123
    assert p.grad is None and p.requires_grad


def test_wrap_shares_memory_both_ways():
    src = draw((64, 8))
    p = Parameter(src, copy=False, name="w")
    assert p.is_wrapped and np.shares_memory(p.data, src)
    src[3, 4] = 7.5
    assert p.data[3, 4] == 7.5
    before = src.copy()
    p.grad = np.ones_like(src)
    qembed.optim.SGD([p], lr=0.5, momentum=0.9).step()   # first step: p -= lr * g
    np.testing.assert_array_equal(src, (before - np.float32(0.5)).astype(np.float32))


@pytest.mark.parametrize("bad, exc", [
    (np.zeros((8, 8), np.float32)[:, ::2], ValueError),        # strided
    (np.zeros(16, np.int32), TypeError),                       # not float
    (np.zeros(0, np.float32), ValueError),                     # empty
    (np.zeros(16, np.float32).astype(">f4"), TypeError),       # byte order
])
def test_wrap_refuses_what_it_cannot_view(bad, exc):
    with pytest.raises(exc):
        Parameter(bad, copy=False)


def test_wrap_refuses_read_only_memory():
    a = np.zeros(16, np.float32)
    a.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Parameter(a, copy=False)


def test_copy_refuses_non_finite_and_empty():
    with pytest.raises(ValueError):
        Parameter(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError):
        Parameter(np.zeros((0, 3), np.float32))
    with pytest.raises(TypeError):
        Parameter(None)


def test_more_than_two_dimensions_keep_their_shape():
    src = draw((4, 3, 5, 2))
    p = Parameter(src, copy=False)
    assert p.shape == (4, 3, 5, 2) and p.data.shape == (4, 3, 5, 2) and p.numel() == 120
    g = draw((4, 3, 5, 2), 0.1)
    p.grad = g
    assert p.grad.shape == (4, 3, 5, 2)
    s = Parameter(np.float32(2.5))  # a 0-d value
    assert s.shape == () and s.data.shape == () and float(s.data) == 2.5


# --------------------------------------------------------------------------
# p.grad = g
# --------------------------------------------------------------------------


def test_grad_assignment_wraps_float32_and_copies_the_rest():
    p = Parameter(draw((10, 4)))
    g = draw((10, 4), 0.01)
    p.grad = g
    assert p.grad is g                      # as torch: the same memory
    g[2, 2] = 5.0
    assert p.grad[2, 2] == 5.0
    h = draw((10, 4), 0.01).astype(np.float16)
    p.grad = h
    assert p.grad.dtype == np.float32 and not np.shares_memory(p.grad, h)
    np.testing.assert_array_equal(p.grad, h.astype(np.float32))
    strided = np.ascontiguousarray(draw((10, 8)))[:, ::2]
    p.grad = strided
    np.testing.assert_array_equal(p.grad, strided)
    p.grad[...] = 0.25                      # writes into the gradient
    assert (p.grad == 0.25).all()
    p.grad = None
    assert p.grad is None


@pytest.mark.parametrize("bad, exc", [
    (np.zeros((10, 3), np.float32), ValueError),
    (np.zeros(40, np.float32), ValueError),
    (np.array([[np.inf] * 4] * 10, np.float32), ValueError),
    (np.full((10, 4), np.nan, np.float16), ValueError),
    (np.zeros((10, 4), np.complex64), TypeError),
])
def test_bad_grad_is_refused_and_changes_nothing(bad, exc):
    p = Parameter(draw((10, 4)))
    g = draw((10, 4))
    p.grad = g
    with pytest.raises(exc):
        p.grad = bad
    assert p.grad is g


def test_non_finite_wrapped_grad_is_refused_at_the_step():
    p = Parameter(draw((64, 64)), copy=True)
    opt = qembed.optim.Adam8bit([p], lr=1e-2)
    g = draw((64, 64), 0.1)
    p.grad = g
    opt.step()
    before = p.data.copy()
    g[7, 9] = np.inf                        # changed after it was assigned
    with pytest.raises(ValueError, match="grad"):
        opt.step()
    np.testing.assert_array_equal(p.data, before)


def test_cleared_grad_is_skipped_by_the_step():
    p, q = Parameter(draw(50)), Parameter(draw(50))
    opt = qembed.optim.Adam([p, q], lr=0.1)
    p.grad, q.grad = draw(50), draw(50)
    opt.step()
    before = p.data.copy()
    p.grad = None
    q.grad = draw(50)
    opt.step()
    np.testing.assert_array_equal(p.data, before)
    assert opt.state[p]["step"] == 1 and opt.state[q]["step"] == 2


def test_layer_dense_grad_can_be_assigned():
    emb = qembed.nn.Embedding(30, 4)
    g = draw((30, 4), 0.1)
    emb.weight.grad = g
    assert emb.weight.grad is g
    before = g.copy()
    emb.backward(np.array([1, 1, 3]), np.ones((3, 4), np.float32))   # accumulates into g
    np.testing.assert_array_equal(g[1], before[1] + np.float32(1) + np.float32(1))
    np.testing.assert_array_equal(g[3], before[3] + np.float32(1))
    np.testing.assert_array_equal(g[0], before[0])
    sparse = qembed.nn.Embedding(30, 4, sparse=True)
    with pytest.raises(TypeError):
        sparse.weight.grad = g


# --------------------------------------------------------------------------
# optimizers over standalone parameters
# --------------------------------------------------------------------------


def _train(params, grads, factory):
    opt = factory(params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    return opt


@pytest.mark.parametrize("factory", [
    lambda ps: qembed.optim.AdamW8bit(ps, lr=3e-3, weight_decay=0.01),
    lambda ps: qembed.optim.Lion8bit(ps, lr=1e-3),
    lambda ps: qembed.optim.SGD8bit(ps, lr=1e-2, momentum=0.9),
    lambda ps: qembed.optim.RMSprop8bit(ps, lr=1e-3),
])
def test_standalone_equals_layer_parameter_bit_for_bit(factory):
    """The optimizer runs the same kernel on a wrapped buffer, an owned copy
    and a layer's weight: equal to the bit (so the bitsandbytes fixtures
    that check layer parameters cover standalone ones)."""
    shape = (96, 96)
    init = draw(shape, 0.1)
    grads = [[draw(shape, 10.0 ** -k)] for k in range(1, 5)]
    emb = qembed.nn.Embedding(*shape, _weight=init)
    qembed.optim.GlobalOptimManager.get_instance().override_config(emb.weight, "optim_bits", 8)
    wrapped_mem = init.copy()
    runs = [[emb.weight], [Parameter(init)], [Parameter(wrapped_mem, copy=False)]]
    opts = [_train(ps, grads, factory) for ps in runs]
    assert all(o.state_info(ps[0])["bits"] == 8 for o, ps in zip(opts, runs))
    for ps in runs[1:]:
        np.testing.assert_array_equal(ps[0].data.view(np.uint32), emb.weight.data.view(np.uint32))
    assert not np.array_equal(wrapped_mem, init)


def test_mixed_parameters_and_state_dict_resume(tmp_path):
    emb = qembed.nn.StableEmbedding(200, 64)
    extra = Parameter(draw((64, 64)), name="proj")
    mem = draw(300)
    bias = Parameter(mem, copy=False, name="bias")
    params = list(emb.parameters()) + [extra, bias]
    steps = [[draw(p.shape, 0.01) for p in params] for _ in range(6)]

    def run(opt, ps, seq):
        for gs in seq:
            for p, g in zip(ps, gs):
                p.grad = g.copy()
            opt.step()

    opt = qembed.optim.Adam8bit(params, lr=1e-3, min_8bit_size=1024)
    run(opt, params, steps[:3])
    saved = opt.state_dict()
    snap = [p.data.copy() for p in params]
    run(opt, params, steps[3:])
    final = [p.data.copy() for p in params]

    emb2 = qembed.nn.StableEmbedding(200, 64)
    ps2 = list(emb2.parameters()) + [Parameter(snap[3]), Parameter(snap[4].copy(), copy=False)]
    for p, s in zip(ps2[:3], snap[:3]):
        p.data = s
    opt2 = qembed.optim.Adam8bit(ps2, lr=1e-3, min_8bit_size=1024)
    opt2.load_state_dict(saved)
    run(opt2, ps2, steps[3:])
    for a, b in zip(final, ps2):
        np.testing.assert_array_equal(a, b.data)
    assert opt.state_info(extra)["bits"] == 8


# --------------------------------------------------------------------------
# torch models stepped by qembed (CPU offload)
# --------------------------------------------------------------------------


def _torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def _model(torch):
    torch.manual_seed(1234)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 16))


def _batches(torch, n):
    g = torch.Generator().manual_seed(99)
    w = torch.randn(64, 16, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(128, 64, generator=g)
        out.append((x, (x @ w).argmax(1)))
    return out


def _fit(torch, model, opt, batches):
    losses = []
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_torch_model_is_stepped_in_place():
    torch = _torch()
    model = _model(torch)
    ptrs = [p.data_ptr() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    opt = qembed.optim.AdamW8bit(model.parameters(), lr=1e-3)
    x, y = _batches(torch, 1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    opt.step()
    for qp, g in zip(opt.param_groups[0]["params"], grads):
        assert qp._grad_source[1] == g.data_ptr()          # the gradient was wrapped, not copied
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_info(opt.param_groups[0]["params"][0])["bits"] == 8


def test_torch_adamw8bit_tracks_bitsandbytes():
    """Trained from one init on one batch sequence: qembed's AdamW8bit on
    the wrapped torch parameters stays as close to torch's 32-bit AdamW as
    bitsandbytes' AdamW8bit does (mean |p - p32| within 1.25x, the
    criterion of the fixture tests), and the losses agree."""
    torch = _torch()
    bnb = pytest.importorskip("bitsandbytes")
    batches = _batches(torch, 30)
    m32, m8, mq = _model(torch), _model(torch), _model(torch)
    kw = dict(lr=2e-3, betas=(0.9, 0.995), eps=1e-8, weight_decay=0.01)
    l32 = _fit(torch, m32, torch.optim.AdamW(m32.parameters(), **kw), batches)
    l8 = _fit(torch, m8, bnb.optim.AdamW8bit(m8.parameters(), **kw), batches)
    lq = _fit(torch, mq, qembed.optim.AdamW8bit(mq.parameters(), **kw), batches)
    for (name, p32), p8, pq in zip(m32.named_parameters(), m8.parameters(), mq.parameters()):
        theirs = (p8 - p32).abs().mean().item()
        ours = (pq - p32).abs().mean().item()
        assert ours <= 1.25 * theirs + 1e-7, f"{name}: qembed {ours:.3g} vs bitsandbytes {theirs:.3g}"
    assert abs(lq[-1] - l32[-1]) <= max(1.25 * abs(l8[-1] - l32[-1]), 2e-3)


def test_torch_state_dict_resume_is_exact():
    torch = _torch()
    batches = _batches(torch, 8)
    model = _model(torch)
    opt = qembed.optim.AdamW8bit(model.parameters(), lr=1e-3)
    _fit(torch, model, opt, batches[:4])
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = opt.state_dict()
    _fit(torch, model, opt, batches[4:])

    again = _model(torch)
    again.load_state_dict(saved_model)
    opt2 = qembed.optim.AdamW8bit(again.parameters(), lr=1e-3)
    opt2.load_state_dict(saved_opt)
    _fit(torch, again, opt2, batches[4:])
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_torch_bf16_and_frozen_parameters():
    torch = _torch()
    lin = torch.nn.Linear(32, 32).to(torch.bfloat16)
    lin.bias.requires_grad_(False)
    ps = qembed.interop.torch_parameters(lin.named_parameters())
    assert [p.name for p in ps] == ["weight"] and ps[0].dtype.itemsize == 2
    opt = qembed.optim.Adam(ps, lr=1e-2)
    before = lin.weight.detach().clone()
    lin(torch.randn(4, 32, dtype=torch.bfloat16)).sum().backward()
    opt.step()                                  # a bf16 gradient is converted (copied)
    assert not torch.equal(before, lin.weight) and lin.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="contiguous"):
        qembed.interop.torch_parameters([torch.zeros(8, 8, requires_grad=True).t()])


@pytest.mark.parametrize("sparse", [False, True])
def test_an_empty_backward_still_counts_as_a_step(sparse):
    """torch: the gradient of an empty lookup is zeros (dense) or an empty
    sparse tensor, and the optimizer's step count advances; so here (a row
    shard that no id reached must keep the whole table's step count)."""
    emb = qembed.nn.Embedding(40, 8, sparse=sparse, padding_idx=3)
    opt = qembed.optim.Adam(emb.parameters(), lr=0.1)
    emb.backward(np.array([1, 2]), np.ones((2, 8), np.float32))
    opt.step(); opt.zero_grad()
    before = emb.weight.data.copy()
    emb.backward(np.array([], np.int64), np.zeros((0, 8), np.float32))
    opt.step(); opt.zero_grad()
    assert opt.state[emb.weight]["step"] == 2
    if sparse:
        np.testing.assert_array_equal(emb.weight.data, before)   # no row touched: nothing moves
    emb.backward(np.array([3, 3]), np.ones((2, 8), np.float32))   # padding only
    opt.step(); opt.zero_grad()
    assert opt.state[emb.weight]["step"] == 3
    opt.step()                                                     # no backward since zero_grad: skipped
    assert opt.state[emb.weight]["step"] == 3 or not sparse
