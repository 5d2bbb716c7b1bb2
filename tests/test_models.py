"""Stacked layers, token inputs, masks, lengths and last-step losses (issue 13) against oracles.

The oracles are independent of the code under test: PyTorch autograd in
float64 (nn.LSTM/nn.GRU/nn.RNN with num_layers=k, nn.Embedding in front,
pack_padded_sequence for variable lengths, a hand-built GRU-over-LSTM stack),
central finite differences, and plain BPTT (policy="full") for the
bit-identity of every other policy and budget.

Every distinct stack structure compiles a Numba sweep of its own, so the
default run uses two new ones, [LSTM, LSTM] and [Embedding, LSTM, LSTM, LSTM]
(plus the single LSTM the rest of the suite compiles anyway), all in float64;
the GRU, Elman and mixed stacks and the fresh-process T = 10^6 run are marked
slow.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memopt_bptt as mb
from memopt_bptt import _model

T, B, I, H, O, V = 7, 3, 3, 4, 3, 6
TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    return torch


# ---- the models ------------------------------------------------------------------------------------

CELL = {"lstm": mb.LSTM, "gru": mb.GRU, "rnn": mb.Elman}


def make_model(kinds, *, vocab=None, loss="mse", loss_at="every", lanes=1, stacked=True):
    """Our Sequence: an optional Embedding(vocab, I), then cells of ``kinds`` (I -> H -> H ...)."""
    cells = [CELL[k](I if j == 0 else H, H) for j, k in enumerate(kinds)]
    if not stacked:
        assert len(cells) == 1 and vocab is None
        return mb.Sequence(cells[0], output_size=O, loss=loss, loss_at=loss_at, lanes=lanes)
    layers = ([mb.Embedding(vocab, I)] if vocab else []) + cells
    return mb.Sequence(layers, output_size=O, loss=loss, loss_at=loss_at, lanes=lanes)


def data(rng, *, T=T, B=B, vocab=None, loss="mse", loss_at="every", n_out=O):
    xs = rng.integers(0, vocab, (T, B)) if vocab else rng.standard_normal((T, B, I))
    if loss_at == "last":
        ys = rng.integers(0, n_out, B) if loss == "cross_entropy" else rng.standard_normal((B, n_out))
    else:
        ys = rng.integers(0, n_out, (T, B)) if loss == "cross_entropy" else rng.standard_normal((T, B, n_out))
    return xs, ys


# ---- the torch oracle ------------------------------------------------------------------------------

class TorchStack:
    """A torch model with attributes ``embedding`` (optional), ``rnn`` and ``readout``: for one kind of
    cell, torch's own nn.LSTM/nn.GRU/nn.RNN(num_layers=k), whose state_dict keys are ours; for mixed
    kinds, a hand-built stack of one-layer modules (``layers``) run one over the other."""

    def __init__(self, torch, kinds, vocab=None, seed=0):
        self.torch = torch
        torch.manual_seed(seed)
        nn = torch.nn
        mod = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
        self.kinds = kinds
        self.uniform = len(set(kinds)) == 1
        if self.uniform:
            self.rnn = mod[kinds[0]](I, H, num_layers=len(kinds)).double()
            self.layers = None
        else:
            self.layers = [mod[k](I if j == 0 else H, H).double() for j, k in enumerate(kinds)]
        self.readout = nn.Linear(H, O).double()
        self.embedding = nn.Embedding(vocab, I).double() if vocab else None
        # perturb the biases so that bias_ih and bias_hh are told apart
        with torch.no_grad():
            for p in self.parameters().values():
                p.add_(0.1 * torch.randn(p.shape, dtype=torch.float64))

    def parameters(self):
        """Our names -> torch's tensors (for a uniform stack the names are torch's own state_dict keys)."""
        out = {}
        if self.uniform:
            out.update({f"rnn.{k}": p for k, p in self.rnn.named_parameters()})
        else:
            for j, layer in enumerate(self.layers):
                out.update({f"rnn.{k[:-1]}{j}": p for k, p in layer.named_parameters()})  # *_l0 -> *_l<j>
        out.update({f"readout.{k}": p for k, p in self.readout.named_parameters()})
        if self.embedding is not None:
            out["embedding.weight"] = self.embedding.weight
        return out

    def state_dict(self):
        """A torch-style state_dict of a module holding rnn, readout and embedding (uniform stacks)."""
        module = self.torch.nn.Module()
        module.rnn = self.rnn
        module.readout = self.readout
        if self.embedding is not None:
            module.embedding = self.embedding
        return module.state_dict()

    def numpy_params(self):
        return {k: p.detach().numpy().copy() for k, p in self.parameters().items()}

    def _run(self, x, hx_layers, lengths):
        """Outputs (T, B, H) padded with zeros after each length, and each layer's final state."""
        torch = self.torch
        rnn_utils = torch.nn.utils.rnn
        T = x.shape[0]

        def one(module, inp, hx):
            if lengths is None:
                return module(inp, hx)
            packed = rnn_utils.pack_padded_sequence(inp, torch.tensor(lengths), enforce_sorted=False)
            out, hn = module(packed, hx)
            out, _ = rnn_utils.pad_packed_sequence(out, total_length=T)
            return out, hn

        if self.uniform:
            return one(self.rnn, x, hx_layers)
        finals = []
        for j, layer in enumerate(self.layers):
            hx = None if hx_layers is None else hx_layers[j]
            x, hn = one(layer, x, hx)
            finals.append(hn)
        return x, finals

    def value_and_grad(self, xs, ys, *, loss, loss_at="every", mask=None, lengths=None, h0=None):
        """(loss, grads by our names, dL/dh0 in our state shape or None, final state in our shape)."""
        torch = self.torch
        F = torch.nn.functional
        params = self.parameters()
        for p in params.values():
            p.grad = None
        if self.embedding is not None:
            x = self.embedding(torch.from_numpy(np.asarray(xs)))
        else:
            x = torch.from_numpy(np.array(xs))
        h0_leaf, hx = None, None
        if h0 is not None:
            if self.uniform:
                h0_leaf = torch.from_numpy(np.array(h0)).requires_grad_(True)
                hx = (h0_leaf[0], h0_leaf[1]) if self.kinds[0] == "lstm" else h0_leaf
            else:
                h0_leaf = [torch.from_numpy(np.array(a)).requires_grad_(True) for a in h0]
                hx = [(a[0:1], a[1:2]) if k == "lstm" else a[None] for a, k in zip(h0_leaf, self.kinds)]
        out, hn = self._run(x, hx, lengths)
        y = self.readout(out)
        Tn, Bn = y.shape[:2]
        if loss_at == "last":
            idx = torch.tensor(np.full(Bn, Tn) if lengths is None else lengths) - 1
            yl = y[idx, torch.arange(Bn)]
            if loss == "cross_entropy":
                value = F.cross_entropy(yl, torch.from_numpy(ys), reduction="mean")
            else:
                value = F.mse_loss(yl, torch.from_numpy(ys), reduction="mean")
        else:
            valid = np.ones((Tn, Bn), bool) if lengths is None else np.arange(Tn)[:, None] < lengths[None, :]
            w = np.where(valid, 1.0 if mask is None else mask, 0.0)
            wt = torch.from_numpy(w)
            if loss == "cross_entropy":
                per = F.cross_entropy(y.reshape(Tn * Bn, -1), torch.from_numpy(ys).reshape(-1),
                                      reduction="none").reshape(Tn, Bn)
                value = (per * wt).sum() / wt.sum()
                if mask is None or set(np.unique(mask)) <= {0.0, 1.0}:
                    # the same as torch's own mean over the counted targets
                    v = torch.from_numpy(valid & (w > 0))
                    ref = F.cross_entropy(y[v], torch.from_numpy(ys)[v], reduction="mean")
                    assert abs(ref.item() - value.item()) < 1e-13
            else:
                per = ((y - torch.from_numpy(ys)) ** 2).sum(-1)
                value = (per * wt).sum() / (wt.sum() * y.shape[-1])
                if mask is None or set(np.unique(mask)) <= {0.0, 1.0}:
                    v = torch.from_numpy(valid & (w > 0))
                    ref = F.mse_loss(y[v], torch.from_numpy(ys)[v], reduction="mean")
                    assert abs(ref.item() - value.item()) < 1e-13
        value.backward()
        grads = {k: p.grad.numpy().copy() for k, p in params.items()}
        if h0_leaf is None:
            dh0 = None
        elif self.uniform:
            dh0 = h0_leaf.grad.numpy()
        else:
            dh0 = [a.grad.numpy() for a in h0_leaf]
        return value.item(), grads, dh0, self._final(hn)

    def _final(self, hn):
        """torch's h_n in our state shape."""
        torch = self.torch
        with torch.no_grad():
            if self.uniform:
                return (torch.stack(hn) if self.kinds[0] == "lstm" else hn).numpy().copy()
            return [(torch.cat(h) if k == "lstm" else h[0]).numpy().copy() for h, k in zip(hn, self.kinds)]


def h0_for(model, rng, batch=B):
    shape = model.state_shape(batch)
    if isinstance(shape, list):
        return [0.5 * rng.standard_normal(s) for s in shape]
    return 0.5 * rng.standard_normal(shape)


def assert_close(ours, theirs, tol=TOL, what=""):
    if isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_close(a, b, tol, what)
        return
    assert np.shape(ours) == np.shape(theirs), what
    err = np.max(np.abs(np.asarray(ours) - np.asarray(theirs)), initial=0.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol}"


# (kinds, vocab, loss, loss_at, mask kind, lengths, h0)
LEN = np.array([T, 4, 1])
DEFAULT_CASES = [
    (("lstm", "lstm"), None, "mse", "every", None, None, True),
    (("lstm", "lstm"), None, "cross_entropy", "every", None, LEN, True),
    (("lstm", "lstm"), None, "mse", "every", "binary", LEN, False),
    (("lstm", "lstm"), None, "cross_entropy", "every", "weights", None, True),
    (("lstm", "lstm"), None, "mse", "last", None, LEN, True),
    (("lstm", "lstm"), None, "cross_entropy", "last", None, None, False),
    (("lstm",) * 3, V, "cross_entropy", "every", None, None, True),
    (("lstm",) * 3, V, "cross_entropy", "every", "binary", LEN, True),
    (("lstm",) * 3, V, "mse", "every", "weights", LEN, False),
    (("lstm",) * 3, V, "cross_entropy", "last", None, LEN, True),
    (("lstm",) * 3, V, "mse", "last", None, None, False),
]
SLOW_CASES = [
    (kinds, None, loss, loss_at, mask, lengths, h0)
    for kinds in [("gru", "gru"), ("rnn", "rnn"), ("lstm", "gru")]
    for loss, loss_at, mask, lengths, h0 in [
        ("mse", "every", None, None, True),
        ("cross_entropy", "every", "binary", LEN, True),
        ("cross_entropy", "every", "weights", None, False),
        ("cross_entropy", "last", None, LEN, True),
        ("mse", "last", None, None, False),
    ]
]


def case_id(case):
    kinds, vocab, loss, loss_at, mask, lengths, h0 = case
    return "-".join(["emb" if vocab else "x", "+".join(kinds), loss, loss_at, mask or "nomask",
                     "lengths" if lengths is not None else "full", "h0" if h0 else "zero"])


def run_parity(torch, case, seed=0):
    kinds, vocab, loss, loss_at, mask_kind, lengths, with_h0 = case
    rng = np.random.default_rng(seed)
    ts = TorchStack(torch, kinds, vocab, seed=seed)
    model = make_model(kinds, vocab=vocab, loss=loss, loss_at=loss_at)
    # a torch state_dict loads with .numpy() and nothing else
    params = ts.numpy_params()
    assert set(params) == set(model.param_shapes)
    if ts.uniform:
        sd = ts.state_dict()
        assert set(sd) == set(params)
        params = {k: v.numpy() for k, v in sd.items()}
    xs, ys = data(rng, vocab=vocab, loss=loss, loss_at=loss_at)
    mask = None
    if mask_kind == "binary":
        mask = (rng.random((T, B)) > 0.3).astype(np.float64)
        mask[0] = 1.0
    elif mask_kind == "weights":
        mask = rng.random((T, B)) * 2.0
    if lengths is not None and not vocab:
        # padding may hold any finite value: it must change nothing
        pad = np.arange(T)[:, None] >= lengths[None, :]
        xs[pad] = 1e3
    h0 = h0_for(model, rng) if with_h0 else None
    kw = dict(mask=mask, lengths=lengths)
    out = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=with_h0, **kw)
    t_loss, t_grads, t_dh0, t_final = ts.value_and_grad(xs, ys, loss=loss, loss_at=loss_at, h0=h0, **kw)
    assert abs(out[0] - t_loss) <= TOL * max(1.0, abs(t_loss)), (out[0], t_loss)
    assert set(out[1]) == set(t_grads)
    for k in t_grads:
        assert_close(out[1][k], t_grads[k], what=k)
    if with_h0:
        assert_close(out[2], t_dh0, what="dL/dh0")
    # each row's state at its own length: torch's h_n of the packed batch
    assert_close(mb.final_state(model, params, xs, h0=h0, lengths=lengths), t_final, what="final_state")


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=case_id)
def test_torch_parity(torch, case):
    run_parity(torch, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=case_id)
def test_torch_parity_slow(torch, case):
    run_parity(torch, case)


def test_state_shapes():
    assert make_model(("lstm", "lstm")).state_shape(5) == (2, 2, 5, H)
    assert make_model(("gru", "gru")).state_shape(5) == (2, 5, H)
    assert make_model(("rnn",) * 3, vocab=V).state_shape(5) == (3, 5, H)
    assert make_model(("lstm", "gru")).state_shape(5) == [(2, 5, H), (5, H)]


def test_params_torch_names_round_trip(torch):
    """A module with other attribute names loads through prefixes= and back (strict load_state_dict)."""
    model = make_model(("lstm", "lstm", "lstm"), vocab=V)
    torch.manual_seed(3)
    module = torch.nn.Module()
    module.lstm = torch.nn.LSTM(I, H, num_layers=3).double()
    module.fc = torch.nn.Linear(H, O).double()
    module.emb = torch.nn.Embedding(V, I).double()
    sd = module.state_dict()
    prefixes = {"rnn": "lstm", "readout": "fc", "embedding": "emb"}
    params = model.params_from_torch(sd, prefixes=prefixes)
    for k in ("weight_ih_l2", "bias_hh_l1"):
        np.testing.assert_array_equal(params[f"rnn.{k}"], sd[f"lstm.{k}"].numpy())
    np.testing.assert_array_equal(params["embedding.weight"], sd["emb.weight"].numpy())
    np.testing.assert_array_equal(params["readout.bias"], sd["fc.bias"].numpy())
    other = torch.nn.Module()
    other.lstm = torch.nn.LSTM(I, H, num_layers=3).double()
    other.fc = torch.nn.Linear(H, O).double()
    other.emb = torch.nn.Embedding(V, I).double()
    other.load_state_dict(model.params_to_torch(params, prefixes=prefixes, tensors=True), strict=True)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k].numpy())
    # a bare nn.LSTM's own state_dict, with no prefix
    rnn_only = model.params_to_torch(params, prefixes={"rnn": ""})
    assert "weight_ih_l0" in rnn_only and "readout.weight" in rnn_only


# ---- finite differences ------------------------------------------------------------------------------

def test_finite_differences_embedding_stack_masked():
    rng = np.random.default_rng(11)
    model = make_model(("lstm",) * 3, vocab=V, loss="cross_entropy")
    params = model.init_params(seed=4)
    params = {k: v + 0.05 * rng.standard_normal(v.shape) for k, v in params.items()}
    xs, ys = data(rng, vocab=V, loss="cross_entropy")
    mask = rng.random((T, B)) * (rng.random((T, B)) > 0.3)
    mask[0, 0] = 1.0
    lengths = np.array([T, 5, 2])
    h0 = h0_for(model, rng)
    loss, grads, dh0 = mb.value_and_grad(model, params, xs, ys, mask=mask, lengths=lengths, h0=h0,
                                         budget=budgets_for(model, T, B)[0], policy="revolve",
                                         return_h0_grad=True)

    def f(p, h=h0):
        return mb.value_and_grad(model, p, xs, ys, mask=mask, lengths=lengths, h0=h)[0]

    eps = 1e-6
    used = int(xs[0, 0])
    picks = [("embedding.weight", (used, 1)), ("rnn.weight_ih_l0", (5, 2)), ("rnn.weight_hh_l1", (9, 3)),
             ("rnn.bias_hh_l2", (13,)), ("rnn.bias_ih_l2", (2,)), ("readout.weight", (1, 3)),
             ("readout.bias", (2,))]
    for name, idx in picks:
        plus = {k: v.copy() for k, v in params.items()}
        minus = {k: v.copy() for k, v in params.items()}
        plus[name][idx] += eps
        minus[name][idx] -= eps
        fd = (f(plus) - f(minus)) / (2 * eps)
        assert abs(fd - grads[name][idx]) <= 1e-7 * max(1.0, abs(fd)), (name, idx, fd, grads[name][idx])
    # an embedding row no id uses has no gradient
    unused = sorted(set(range(V)) - set(xs.ravel().tolist()))
    for r in unused:
        assert not grads["embedding.weight"][r].any()
    # dL/dh0: layer 1's c0 of row 1
    hp, hm = h0.copy(), h0.copy()
    hp[1, 1, 1, 2] += eps
    hm[1, 1, 1, 2] -= eps
    fd = (f(params, hp) - f(params, hm)) / (2 * eps)
    assert abs(fd - dh0[1, 1, 1, 2]) <= 1e-7 * max(1.0, abs(fd))


# ---- bit-identity across policies and budgets -------------------------------------------------------

def budgets_for(model, T, batch):
    """Tight and middling byte budgets: the working buffers plus one checkpoint, and half-way to plain BPTT."""
    sizes = model.sizes(batch=batch)
    full = mb.plan(T, budget=1.0, policy="full", model=model, batch=batch, dtype="float64").peak_bytes
    tight = sizes.working_bytes + sizes.state_bytes
    return sorted({tight, (tight + full) // 2})


def every_policy(model, params, xs, ys, **kw):
    """(policy, budget, result) of every policy at each budget it accepts (and policy 'full')."""
    out = [("full", None, mb.value_and_grad(model, params, xs, ys, policy="full", **kw))]
    budgets = budgets_for(model, xs.shape[0], xs.shape[1])
    for policy in mb.POLICIES:
        if policy == "full":
            continue
        for budget in budgets:
            try:
                res = mb.value_and_grad(model, params, xs, ys, budget=budget, policy=policy, **kw)
            except mb.MemoryBudgetError:
                assert policy == "sqrt", (policy, budget)  # only sqrt's fixed sqrt(T) checkpoints may not fit
                continue
            out.append((policy, budget, res))
    return out


def assert_bits(a, b, what):
    assert a[0] == b[0], (what, a[0], b[0])
    for k in a[1]:
        assert np.array_equal(a[1][k], b[1][k]), (what, k)
    if len(a) > 2:
        for x, y in zip(a[2] if isinstance(a[2], list) else [a[2]], b[2] if isinstance(b[2], list) else [b[2]]):
            assert np.array_equal(x, y), (what, "dL/dh0")


def close(a, b, rtol=1e-12):
    assert abs(a[0] - b[0]) <= rtol * max(1.0, abs(b[0]))
    for k in a[1]:
        scale = max(1.0, float(np.abs(b[1][k]).max()))
        assert np.abs(a[1][k] - b[1][k]).max() <= rtol * scale, k
    if len(a) > 2:
        assert np.abs(np.asarray(a[2]) - np.asarray(b[2])).max() <= rtol * max(1.0, np.abs(b[2]).max())


@st.composite
def problems(draw):
    layers = draw(st.integers(1, 3))
    Tn = draw(st.integers(1, 9))
    Bn = draw(st.integers(1, 4))
    loss = draw(st.sampled_from(["mse", "cross_entropy"]))
    loss_at = draw(st.sampled_from(["every", "last"]))
    lengths = None
    if draw(st.booleans()):
        lengths = np.array(draw(st.lists(st.integers(1, Tn), min_size=Bn, max_size=Bn)), np.int64)
    mask = None
    if loss_at == "every" and draw(st.booleans()):
        mask = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 2.0]), min_size=Tn * Bn,
                                      max_size=Tn * Bn))).reshape(Tn, Bn)
        if Bn > 1 and draw(st.booleans()):
            mask[:, draw(st.integers(0, Bn - 1))] = 0.0   # a whole sequence left out
        if not mask.any():
            mask[0, 0] = 1.0
    seed = draw(st.integers(0, 2**16))
    h0 = draw(st.booleans())
    return layers, Tn, Bn, loss, loss_at, lengths, mask, seed, h0


def model_of_depth(layers, **kw):
    """1: the single LSTM; 2: [LSTM, LSTM]; 3: [Embedding, LSTM, LSTM, LSTM] (token ids)."""
    if layers == 1:
        return make_model(("lstm",), stacked=False, **kw), None
    if layers == 2:
        return make_model(("lstm", "lstm"), **kw), None
    return make_model(("lstm",) * 3, vocab=V, **kw), V


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_bit_identity_every_policy_and_budget(problem):
    layers, Tn, Bn, loss, loss_at, lengths, mask, seed, with_h0 = problem
    rng = np.random.default_rng(seed)
    model, vocab = model_of_depth(layers, loss=loss, loss_at=loss_at)
    params = model.init_params(seed=seed)
    xs, ys = data(rng, T=Tn, B=Bn, vocab=vocab, loss=loss, loss_at=loss_at)
    kw = dict(mask=mask, lengths=lengths, return_h0_grad=True)
    if with_h0:
        kw["h0"] = h0_for(model, rng, Bn)
    if mask is not None:
        ends = np.full(Bn, Tn) if lengths is None else lengths
        counted = np.where(np.arange(Tn)[:, None] < ends[None, :], mask, 0)
        if not counted.any():
            with pytest.raises(ValueError, match="mask leaves no step counted"):
                mb.value_and_grad(model, params, xs, ys, **kw)
            return
    results = every_policy(model, params, xs, ys, **kw)
    # every policy but sqrt runs at every budget
    assert len(results) >= 1 + len(budgets_for(model, Tn, Bn)) * (len(mb.POLICIES) - 2)
    ref = results[0][2]
    for policy, budget, res in results[1:]:
        assert_bits(res, ref, (policy, budget))
    if Bn >= 2:
        # two lanes: the same bits across policies, and plain BPTT's up to rounding
        two, _ = model_of_depth(layers, loss=loss, loss_at=loss_at, lanes=2)
        assert two.lane_batches(Bn) != (Bn,)
        lane_results = every_policy(two, params, xs, ys, **kw)
        for policy, budget, res in lane_results[1:]:
            assert_bits(res, lane_results[0][2], ("lanes=2", policy, budget))
        close(lane_results[0][2], ref)


def test_bit_identity_lengths_1_and_T_and_empty_mask_row():
    """The edges hypothesis may miss, on the stack with an embedding: lengths 1 and T, a row masked out."""
    rng = np.random.default_rng(5)
    model = make_model(("lstm",) * 3, vocab=V, loss="cross_entropy")
    params = model.init_params(seed=5)
    Tn = 12
    xs, ys = data(rng, T=Tn, B=4, vocab=V, loss="cross_entropy")
    mask = (rng.random((Tn, 4)) > 0.4).astype(float)
    mask[:, 2] = 0.0
    mask[0, [0, 1, 3]] = 1.0
    lengths = np.array([1, Tn, 5, Tn])
    results = every_policy(model, params, xs, ys, mask=mask, lengths=lengths, return_h0_grad=True)
    for policy, budget, res in results[1:]:
        assert_bits(res, results[0][2], (policy, budget))
    # some schedule really recomputed
    rep = mb.value_and_grad(model, params, xs, ys, mask=mask, lengths=lengths,
                            budget=budgets_for(model, Tn, 4)[0], policy="msm", return_report=True)[-1]
    assert rep.forward_steps > Tn
    # the masked-out row and the steps after each length change nothing: other values there, same bits
    xs2, ys2 = xs.copy(), ys.copy()
    xs2[:, 2] = (xs[:, 2] + 1) % V
    ys2[:, 2] = (ys[:, 2] + 1) % O
    for b in range(4):
        xs2[lengths[b]:, b] = (xs[lengths[b]:, b] + 2) % V
        ys2[lengths[b]:, b] = (ys[lengths[b]:, b] + 2) % O
    again = mb.value_and_grad(model, params, xs2, ys2, mask=mask, lengths=lengths, return_h0_grad=True)
    assert again[0] == results[0][2][0]
    for k in again[1]:
        assert np.array_equal(again[1][k], results[0][2][1][k]), k
    # dL/dh0 of the masked-out row is zero
    assert not again[2][:, :, 2].any()


# ---- memory --------------------------------------------------------------------------------------------

def test_measured_peak_within_budget_stacked_embedding():
    rng = np.random.default_rng(7)
    model = make_model(("lstm",) * 3, vocab=V, loss="cross_entropy")
    params = model.init_params(seed=7)
    Tn, Bn = 400, 3
    xs, ys = data(rng, T=Tn, B=Bn, vocab=V, loss="cross_entropy")
    lengths = np.array([Tn, 300, 1])
    mask = (rng.random((Tn, Bn)) > 0.5).astype(np.float64)
    mask[0] = 1.0
    sizes = model.sizes(batch=Bn)
    full = mb.plan(Tn, budget=1.0, policy="full", model=model, batch=Bn, dtype="float64").peak_bytes
    budget = sizes.working_bytes + 4 * sizes.state_bytes
    assert budget < 0.1 * full
    ref = mb.value_and_grad(model, params, xs, ys, mask=mask, lengths=lengths)
    for policy in ("msm", "revolve", "hsm"):
        loss, grads, rep = mb.value_and_grad(model, params, xs, ys, mask=mask, lengths=lengths, budget=budget,
                                             policy=policy, return_report=True)
        assert rep.planned_bytes <= budget
        assert rep.measured_peak_bytes <= budget + _model.PYTHON_OVERHEAD_BYTES, (policy, rep)
        assert rep.forward_steps > Tn
        assert_bits((loss, grads), ref, policy)


# ---- inputs read in place ------------------------------------------------------------------------------

# A read-only xs (a memmap with mode "r" too) is a Numba type of its own: one more compile of the sweep
# per structure (tens of seconds), so both run in the slow step.
@pytest.mark.parametrize("vocab", [pytest.param(None, marks=pytest.mark.slow), pytest.param(V, marks=pytest.mark.slow)],
                         ids=["floats-2-layers", "ids-embedding-3-layers"])
def test_memmap_and_read_only_inputs_same_bits(tmp_path, vocab):
    rng = np.random.default_rng(9)
    kinds = ("lstm",) * (3 if vocab else 2)
    model = make_model(kinds, vocab=vocab, loss="cross_entropy")
    params = model.init_params(seed=9)
    Tn = 2000
    xs, ys = data(rng, T=Tn, vocab=vocab, loss="cross_entropy")
    lengths = np.array([Tn, 1500, 17])
    ref = mb.value_and_grad(model, params, xs, ys, lengths=lengths, return_h0_grad=True)
    path = tmp_path / "xs.bin"
    w = np.memmap(path, dtype=xs.dtype, mode="w+", shape=xs.shape)
    w[...] = xs
    w.flush()
    del w
    mm = np.memmap(path, dtype=xs.dtype, mode="r", shape=xs.shape)
    ro = xs.copy()
    ro.flags.writeable = False
    sizes = model.sizes(batch=B)
    budget = sizes.working_bytes + 3 * sizes.state_bytes
    for x in (mm, ro):
        got = mb.value_and_grad(model, params, x, ys, lengths=lengths, return_h0_grad=True)
        assert_bits(got, ref, type(x).__name__)
        # under a budget far below xs's own size: xs was not copied
        loss, grads, rep = mb.value_and_grad(model, params, x, ys, lengths=lengths, budget=budget,
                                             return_report=True)
        assert_bits((loss, grads), ref, "budget")
        assert rep.measured_peak_bytes <= budget + _model.PYTHON_OVERHEAD_BYTES < xs.nbytes
        np.testing.assert_array_equal(mb.final_state(model, params, x, lengths=lengths),
                                      mb.final_state(model, params, xs, lengths=lengths))


_HWM_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, memopt_bptt as mb
    T, path_x, path_y, budget = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = mb.Sequence(mb.Elman(1, 4), output_size=1, loss="mse", lanes=1)
    params = model.init_params(seed=0)
    xs = np.memmap(path_x, dtype=np.float64, mode="r", shape=(T, 1, 1))
    ys = np.memmap(path_y, dtype=np.float64, mode="r", shape=(T, 1, 1))
    if budget == 0:  # the forward alone: no schedule, nothing that grows with T but the memmaps' pages
        h = mb.final_state(model, params, xs)
        loss, peak, forwards, codes = float(np.abs(h).sum()), 0, T, 0
    else:
        loss, grads, rep = mb.value_and_grad(model, params, xs, ys, budget=budget, policy="revolve",
                                             return_report=True)
        peak, forwards, codes = rep.measured_peak_bytes, rep.forward_steps, rep.schedule.codes.nbytes
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            hwm = int(line.split()[1]) * 1024
    print(hwm, peak, forwards, loss, codes)
""")


def _hwm_run(tmp_path, T, budget):
    px, py = tmp_path / f"x{T}.bin", tmp_path / f"y{T}.bin"
    for p, f in ((px, np.sin), (py, np.cos)):
        a = np.memmap(p, dtype=np.float64, mode="w+", shape=(T, 1, 1))
        for s in range(0, T, 1 << 16):
            a[s: s + (1 << 16), 0, 0] = f(0.01 * np.arange(s, min(T, s + (1 << 16))))
        a.flush()
        del a
    out = subprocess.run([sys.executable, "-c", _HWM_SCRIPT, str(T), str(px), str(py), str(budget)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    hwm, peak, fwd, loss, codes = out.stdout.split()
    return int(hwm), int(peak), int(fwd), float(loss), int(codes)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM needs Linux /proc")
def test_memmap_million_steps_peak_independent_of_T(tmp_path):
    """T = 10^6 from a memmap, a fresh process each, xs read in place.

    The forward alone (final_state): VmHWM at T = 10^6 is T = 10^4's plus the memmaps' pages (they
    count in VmHWM once touched, 8 MB per file). The gradient under an 8 KiB budget: the sweep's
    traced peak is the same at both T, within the budget; what grows is the schedule itself, 24 bytes
    per action (revolve: about 5 actions per step at this budget), which for a model this small is
    more than plain BPTT's whole memory, so its process's VmHWM is not compared."""
    model = mb.Sequence(mb.Elman(1, 4), output_size=1, loss="mse", lanes=1)
    budget = 8192
    small, large = 10_000, 1_000_000
    _hwm_run(tmp_path, 10, budget)   # compiles the sweep into the cache, so the runs below load it
    h_small, _, _, _, _ = _hwm_run(tmp_path, small, 0)
    h_large, _, _, forward_sum, _ = _hwm_run(tmp_path, large, 0)
    assert np.isfinite(forward_sum)
    files = 2 * large * 8
    growth = h_large - h_small
    assert growth <= files + 4 * 2**20, f"VmHWM grew {growth} bytes from T={small} to T={large} (memmaps {files})"
    _, p_small, f_small, _, _ = _hwm_run(tmp_path, small, budget)
    _, p_large, f_large, loss, codes = _hwm_run(tmp_path, large, budget)
    assert np.isfinite(loss) and f_large > large and f_small > small
    assert p_small <= budget + _model.PYTHON_OVERHEAD_BYTES
    assert p_large <= budget + _model.PYTHON_OVERHEAD_BYTES
    assert abs(p_large - p_small) <= 1024  # the sweep's own memory does not grow with T
    assert codes == 24 * (codes // 24)


# ---- bad input -------------------------------------------------------------------------------------------

def _bad_cases():
    rng = np.random.default_rng(0)
    m2 = make_model(("lstm", "lstm"), loss="cross_entropy")
    p2 = m2.init_params()
    xs, ys = data(rng, loss="cross_entropy")
    m3 = make_model(("lstm",) * 3, vocab=V, loss="cross_entropy")
    p3 = m3.init_params()
    ids, yi = data(rng, vocab=V, loss="cross_entropy")
    last = make_model(("lstm", "lstm"), loss="cross_entropy", loss_at="last")
    y_last = rng.integers(0, O, B)
    missing = {k: v for k, v in p3.items() if not k.endswith("_l2")}
    mixed = make_model(("lstm", "gru"))
    pm = mixed.init_params()
    xm, ym = data(rng)
    vg = mb.value_and_grad
    return [
        ("mask-shape", lambda: vg(m2, p2, xs, ys, mask=np.ones((T, B + 1))), ValueError,
         r"mask has shape \(7, 4\), expected \(T, batch\) = \(7, 3\)"),
        ("mask-transposed", lambda: vg(m2, p2, xs, ys, mask=np.ones((B, T))), ValueError, "mask has shape"),
        ("mask-negative", lambda: vg(m2, p2, xs, ys, mask=-np.ones((T, B))), ValueError, "mask must hold"),
        ("lengths-shape", lambda: vg(m2, p2, xs, ys, lengths=np.array([T, T])), ValueError,
         r"lengths has shape \(2,\), expected \(batch,\) = \(3,\)"),
        ("lengths-2d", lambda: vg(m2, p2, xs, ys, lengths=np.full((B, 1), T)), ValueError, "lengths has shape"),
        ("lengths-float", lambda: vg(m2, p2, xs, ys, lengths=np.full(B, 2.0)), TypeError, "lengths must be integers"),
        ("length-0", lambda: vg(m2, p2, xs, ys, lengths=np.array([T, 0, 2])), ValueError,
         r"lengths\[1\] = 0 is outside 1..T"),
        ("length-above-T", lambda: vg(m2, p2, xs, ys, lengths=np.array([T, T + 1, 2])), ValueError,
         r"lengths\[1\] = 8 is outside 1..T = 1..7"),
        ("fully-masked", lambda: vg(m2, p2, xs, ys, mask=np.zeros((T, B))), ValueError, "mask leaves no step counted"),
        ("masked-within-lengths", lambda: vg(m2, p2, xs, ys, mask=np.triu(np.ones((T, B)), 3),
                                             lengths=np.array([1, 2, 3])), ValueError, "mask leaves no step counted"),
        ("id-negative", lambda: vg(m3, p3, np.where(ids == ids[2, 1], -1, ids), yi), ValueError,
         r"xs holds token ids -1\.\.\d+, outside the vocabulary \[0, 6\)"),
        ("id-too-large", lambda: vg(m3, p3, np.where(ids == ids[2, 1], V, ids), yi), ValueError,
         r"outside the vocabulary \[0, 6\)"),
        ("ids-float", lambda: vg(m3, p3, ids.astype(float), yi), TypeError, "xs must hold integer token ids"),
        ("ids-3d", lambda: vg(m3, p3, xs, ys), ValueError, r"xs must hold token ids of shape \(T, batch\)"),
        ("final-state-ids", lambda: mb.final_state(m3, p3, np.where(ids == ids[0, 0], V + 5, ids)), ValueError,
         "final_state: xs holds token ids"),
        ("layers-do-not-chain", lambda: mb.Sequence([mb.LSTM(I, H), mb.LSTM(H + 1, H)], output_size=O),
         ValueError, r"layer 1 .*input_size=5 but layer 0's hidden_size is 4"),
        ("embedding-does-not-chain", lambda: mb.Sequence([mb.Embedding(V, I + 1), mb.GRU(I, H)], output_size=O),
         ValueError, r"layer 0 .*input_size=3 but the embedding's embedding_dim is 4"),
        ("embedding-not-first", lambda: mb.Sequence([mb.LSTM(I, H), mb.Embedding(V, H)], output_size=O),
         ValueError, "Embedding can only be the first layer"),
        ("params-missing-layer", lambda: vg(m3, missing, ids, yi), ValueError,
         r"params has missing \['rnn.weight_ih_l2', 'rnn.weight_hh_l2', 'rnn.bias_ih_l2', 'rnn.bias_hh_l2'\]"),
        ("params-single-cell-names", lambda: vg(m2, make_model(("lstm",), stacked=False).init_params(), xs, ys),
         ValueError, r"params has missing \[.*'rnn.weight_ih_l0'.*unexpected \[.*'cell.weight_ih'"),
        ("jordan-on-top", lambda: mb.Sequence([mb.LSTM(I, H), mb.Jordan(H, H)], output_size=O), ValueError,
         "'jordan' cell .* cannot be stacked"),
        ("jordan-below", lambda: mb.Sequence([mb.Jordan(I, H), mb.LSTM(H, H)], output_size=O), ValueError,
         "cannot be stacked"),
        ("last-with-mask", lambda: vg(last, p2, xs, y_last, mask=np.ones((T, B))), ValueError,
         "mask= and loss_at='last'"),
        ("last-ys-per-step", lambda: vg(last, p2, xs, ys), ValueError,
         r"ys has shape \(7, 3\), expected integer labels of shape \(3,\)"),
        ("truncated-last", lambda: mb.truncated_value_and_grad(last, p2, xs, y_last, h=3, h_prime=3), ValueError,
         "truncated_value_and_grad: loss_at='last'"),
        ("train-truncated-last", lambda: mb.train(last, p2, (xs, y_last), optimizer=mb.SGD(0.1), steps=1,
                                                  truncate=(3, 3), progress=False), ValueError,
         "train: loss_at='last'"),
        ("h0-stack-shape", lambda: vg(m2, p2, xs, ys, h0=np.zeros((2, B, H))), ValueError,
         r"h0 has shape \(2, 3, 4\), expected \(2, 2, 3, 4\)"),
        ("h0-mixed-not-list", lambda: vg(mixed, pm, xm, ym, h0=np.zeros((2, B, H))), ValueError,
         "h0 must be a list of 2 arrays"),
        ("labels-out-of-range-counted", lambda: vg(m2, p2, xs, np.where(ys == ys[0, 0], O, ys)), ValueError,
         r"ys labels must be in \[0, 3\)"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(case):
    _, call, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        call()


def test_params_from_torch_lists_missing_and_unexpected(torch):
    model = make_model(("lstm", "lstm"))
    module = torch.nn.Module()
    module.lstm = torch.nn.LSTM(I, H, num_layers=2).double()
    module.readout = torch.nn.Linear(H, O).double()
    with pytest.raises(ValueError, match=r"missing \['rnn.weight_ih_l0'.*unexpected \['lstm.weight_ih_l0'") as e:
        model.params_from_torch(module.state_dict())
    assert "prefixes=" in str(e.value)
    # one layer too few: the missing layer's keys are named
    module.lstm = torch.nn.LSTM(I, H, num_layers=1).double()
    with pytest.raises(ValueError, match=r"missing \['lstm.weight_ih_l1', 'lstm.weight_hh_l1'"):
        model.params_from_torch(module.state_dict(), prefixes={"rnn": "lstm"})
    # the right keys with a wrong shape
    module.lstm = torch.nn.GRU(I, H, num_layers=2).double()
    with pytest.raises(ValueError, match=r"state_dict\['lstm.weight_ih_l0'\] has shape"):
        model.params_from_torch(module.state_dict(), prefixes={"rnn": "lstm"})


def test_padding_labels_and_padding_values_are_free():
    """Padding after each length may hold any label (e.g. -100) and any finite input; counted labels are checked."""
    rng = np.random.default_rng(2)
    model = make_model(("lstm", "lstm"), loss="cross_entropy")
    params = model.init_params(seed=2)
    xs, ys = data(rng, loss="cross_entropy")
    lengths = np.array([T, 3, 1])
    ref = mb.value_and_grad(model, params, xs, ys, lengths=lengths)
    xs2, ys2 = xs.copy(), ys.copy()
    for b, n in enumerate(lengths):
        ys2[n:, b] = -100
        xs2[n:, b] = -1e6
    assert_bits(mb.value_and_grad(model, params, xs2, ys2, lengths=lengths), ref, "padding")
    ys3 = ys2.copy()
    ys3[2, 1] = -100   # inside sequence 1's length
    with pytest.raises(ValueError, match="ys labels at counted steps"):
        mb.value_and_grad(model, params, xs2, ys3, lengths=lengths)


# ---- train and truncated BPTT --------------------------------------------------------------------------

def test_train_batches_with_mask_and_lengths_match_a_hand_loop():
    rng = np.random.default_rng(13)
    m2 = make_model(("lstm", "lstm"), loss="cross_entropy")
    m3 = make_model(("lstm",) * 3, vocab=V, loss="cross_entropy")
    for model, vocab in ((m2, None), (m3, V)):
        params = model.init_params(seed=13)
        batches = []
        for k, Tn in enumerate((T, T + 3)):
            xs, ys = data(rng, T=Tn, vocab=vocab, loss="cross_entropy")
            mask = (rng.random((Tn, B)) > 0.3).astype(np.float64)
            mask[0] = 1.0
            lengths = np.array([Tn, Tn - 2, 1])
            extras = {"mask": mask, "lengths": lengths} if k == 0 else {"lengths": lengths}
            batches.append((xs, ys, extras))
        lr = 0.3
        sizes = model.sizes(batch=B)
        budget = sizes.working_bytes + 2 * sizes.state_bytes
        got, history = mb.train(model, params, batches, optimizer=mb.SGD(lr), epochs=2, budget=budget,
                                progress=False)
        want = {k: v.copy() for k, v in params.items()}
        losses = []
        for _ in range(2):
            for xs, ys, extras in batches:
                loss, grads = mb.value_and_grad(model, want, xs, ys, policy="full", **extras)
                losses.append(loss)
                want = {k: v - lr * grads[k] for k, v in want.items()}
        assert history["loss"] == losses
        for k in want:
            assert np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("vocab", [None, V], ids=["floats-2-layers", "ids-embedding-3-layers"])
def test_truncated_with_mask_equals_full_gradient(vocab):
    rng = np.random.default_rng(17)
    kinds = ("lstm",) * (3 if vocab else 2)
    model = make_model(kinds, vocab=vocab, loss="mse")
    params = model.init_params(seed=17)
    Tn = 10
    xs, ys = data(rng, T=Tn, vocab=vocab)
    mask = rng.random((Tn, B)) * (rng.random((Tn, B)) > 0.3)
    mask[0, 0] = 1.0
    mask[:, 1] = 0.0   # a sequence left out
    ref = mb.value_and_grad(model, params, xs, ys, mask=mask)
    sizes = model.sizes(batch=B)
    tight = sizes.working_bytes + 2 * sizes.state_bytes
    # h = h' = T: one window, plain BPTT with the same mask, bit for bit (under a budget too)
    for budget in (None, tight):
        got = mb.truncated_value_and_grad(model, params, xs, ys, h=Tn, h_prime=Tn, mask=mask, budget=budget)
        assert_bits(got, ref, ("h=h'=T", budget))
    # h >= T: the exact gradient up to rounding for any h'
    for h, hp in ((Tn, 3), (Tn + 5, 4), (2 * Tn, 1)):
        close(mb.truncated_value_and_grad(model, params, xs, ys, h=h, h_prime=hp, mask=mask, budget=tight), ref)
    # lengths and mask together
    lengths = np.array([Tn, 6, 2])
    ref2 = mb.value_and_grad(model, params, xs, ys, mask=mask, lengths=lengths)
    assert_bits(mb.truncated_value_and_grad(model, params, xs, ys, h=Tn, h_prime=Tn, mask=mask,
                                            lengths=lengths), ref2, "lengths+mask")
    close(mb.truncated_value_and_grad(model, params, xs, ys, h=Tn + 1, h_prime=3, lengths=lengths),
          mb.value_and_grad(model, params, xs, ys, lengths=lengths))
    # train on-line with truncate=(T, T): one window, the same update as without truncation
    batch = (xs, ys, {"mask": mask, "lengths": lengths})
    plain, _ = mb.train(model, params, batch, optimizer=mb.SGD(0.1), steps=1, budget=tight, progress=False)
    online, _ = mb.train(model, params, batch, optimizer=mb.SGD(0.1), steps=1, budget=tight, progress=False,
                         truncate=(Tn, Tn))
    for k in plain:
        assert np.array_equal(plain[k], online[k]), k
    # h < T really truncates: a different gradient
    short = mb.truncated_value_and_grad(model, params, xs, ys, h=2, h_prime=2, mask=mask)
    assert not np.allclose(short[1]["rnn.weight_hh_l0"], ref[1]["rnn.weight_hh_l0"])
