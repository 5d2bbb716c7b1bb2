"""memopt_bptt.distributed on a LocalCluster of worker processes, against
independent oracles: the core's value_and_grad over the same shards in this
process, added by the documented rule (a pairwise tree of count * gradient in
float64, divided by the total count) written out here, and the unsharded
batch within rounding. Skipped when dask/distributed are not installed.

Every test runs under a SIGALRM limit and every cluster is closed by its
fixture. The workers load the sweeps compiled here (Numba's cache on disk):
the fixture compiles them in this process first.
"""

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import memopt_bptt as mb  # noqa: E402
import memopt_bptt.distributed as mbd  # noqa: E402

TEST_SECONDS = 150    # every test's limit
SETUP_SECONDS = 600   # the module's cluster and warm-up: with an empty Numba cache this process compiles first

LSTM = mb.Sequence(mb.LSTM(input_size=3, hidden_size=8), output_size=2)
GRU_CE = mb.Sequence(mb.GRU(input_size=3, hidden_size=6), output_size=4, loss="cross_entropy")


@contextlib.contextmanager
def limit(seconds, what):
    def expire(signum, frame):
        raise TimeoutError(f"{what} ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def time_limit():
    with limit(TEST_SECONDS, "the test"):
        yield


def data(model, T, B, *, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, model.input_size)).astype(dtype)
    return xs, (rng.standard_normal((T, B, model.output_size)).astype(dtype) if model.loss == "mse"
                else rng.integers(0, model.output_size, size=(T, B)))


def warm_up():
    """Compile (or load) every sweep and planner the workers run, here, so they load them from the cache."""
    for model, dtype in ((LSTM, np.float64), (LSTM, np.float32), (GRU_CE, np.float64)):
        xs, ys = data(model, 30, 2, dtype=dtype)
        mb.value_and_grad(model, model.init_params(dtype=dtype), xs, ys, budget=0.5)
    for policy in ("msm", "hsm"):
        mb.plan(30, budget=0.5, model=LSTM, batch=2, policy=policy)


def local_cluster(n_workers, **kwargs):
    return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", **kwargs)  # ":0": any free port


@pytest.fixture(scope="module")
def client():
    with limit(SETUP_SECONDS, "the cluster's setup"):
        warm_up()
        cluster = local_cluster(2)
    with cluster, distributed.Client(cluster, timeout=60) as c:
        yield c


# ---- the oracle -------------------------------------------------------------------------

def pairwise(items):
    """((0 + 1) + (2 + 3)) + ...: pairs, then pairs of pairs, an odd last one carried up."""
    while len(items) > 1:
        items = [items[i] + items[i + 1] for i in range(0, len(items) - 1, 2)] + items[len(items) // 2 * 2:]
    return items[0]


def rows_of(a, axis, b0, b1):
    return np.take(a, np.arange(b0, b1), axis=axis)


def oracle(model, params, xs, ys, sizes, *, h0=None, h0_axis=None, mask=None, lengths=None, **kwargs):
    """The documented reduction of the core's results over the shards, in this process.

    A shard's count is its loss terms: T * rows; rows for loss_at="last"; the
    mask's weights (1 without one) before each row's length. ``h0_axis``: the
    batch axis of h0, or a list of them for a list of layers' states."""
    dtype = next(iter(params.values())).dtype
    last = model.loss_at == "last"
    ends = np.cumsum(sizes)
    runs, counts = [], []
    for b0, b1 in zip(ends - sizes, ends):
        weights = np.ones((xs.shape[0], b1 - b0)) if mask is None else mask[:, b0:b1].astype(np.float64)
        if lengths is not None:
            weights[np.arange(xs.shape[0])[:, None] >= lengths[None, b0:b1]] = 0.0
        counts.append(float(b1 - b0) if last else float(weights.sum()))
        if counts[-1] == 0:   # nothing counted in this shard: it adds nothing
            runs.append(None)
            continue
        h0_k = None
        if h0 is not None:
            h0_k = ([rows_of(a, ax, b0, b1) for a, ax in zip(h0, h0_axis)] if isinstance(h0, list)
                    else rows_of(h0, h0_axis, b0, b1))
        extras = {} if mask is None else {"mask": mask[:, b0:b1]}
        if lengths is not None:
            extras["lengths"] = lengths[b0:b1]
        runs.append(mb.value_and_grad(model, params, xs[:, b0:b1], ys[b0:b1] if last else ys[:, b0:b1], h0=h0_k,
                                      return_h0_grad=h0 is not None, **extras, **kwargs))
    if len(sizes) == 1:
        return runs[0]
    total = sum(counts)
    loss = pairwise([c * r[0] if r else 0.0 for c, r in zip(counts, runs)]) / total
    grads = {k: (pairwise([c * r[1][k].astype(np.float64) if r else np.zeros(params[k].shape)
                           for c, r in zip(counts, runs)]) / total).astype(dtype) for k in params}
    if h0 is None:
        return loss, grads
    axes = h0_axis if isinstance(h0, list) else [h0_axis]
    parts = [[(g * (c / total)).astype(dtype) for g in (r[2] if isinstance(h0, list) else [r[2]])]
             for c, r in zip(counts, runs)]
    dh0 = [np.concatenate([p[k] for p in parts], axis=ax) for k, ax in enumerate(axes)]
    return loss, grads, dh0 if isinstance(h0, list) else dh0[0]


def same_bits(a, b):
    assert a[0] == b[0]
    assert set(a[1]) == set(b[1])
    for k in a[1]:
        assert a[1][k].dtype == b[1][k].dtype and np.array_equal(a[1][k], b[1][k]), k


def max_rel_diff(a, b):
    """Largest |a - b| relative to the largest |b| entry of the same parameter, and of the loss."""
    worst = abs(a[0] - b[0]) / abs(b[0])
    for k in b[1]:
        worst = max(worst, float(np.abs(a[1][k] - b[1][k]).max() / np.abs(b[1][k]).max()))
    return worst


# ---- results ------------------------------------------------------------------------------

def test_the_core_never_imports_dask():
    code = ("import sys, memopt_bptt, memopt_bptt.training, memopt_bptt.testing; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype, shards, sizes, budget, tol", [
    (np.float64, 4, (3, 3, 3, 3), 0.2, 1e-13),
    (np.float32, 2, (6, 6), "8KiB", 2e-6),
    (np.float64, (5, 4, 3), (5, 4, 3), None, 1e-13),   # unequal shards weigh by their rows
])
def test_shards_equal_the_core_over_the_same_shards(client, dtype, shards, sizes, budget, tol):
    params = LSTM.init_params(seed=1, dtype=dtype)
    xs, ys = data(LSTM, 40, 12, seed=2, dtype=dtype)
    # the oracle first: what this process compiles (the planner's paths for this budget) the workers then load
    want = oracle(LSTM, params, xs, ys, sizes, budget=budget)
    got = mbd.value_and_grad(client, LSTM, params, xs, ys, shards=shards, budget=budget)
    same_bits(got, want)
    whole = mb.value_and_grad(LSTM, params, xs, ys)   # plain BPTT: the same bits as any budget's
    assert 0 < max_rel_diff(got, whole) < tol   # another order of the same sums, not the same bits


def test_models_travel_as_recipes_only_when_rebuilt_alike():
    # a recipe is rebuilt on the worker from its own cached kernels; anything else travels pickled
    recipe = mbd._portable(GRU_CE)
    assert isinstance(recipe, mbd._Recipe) and repr(mbd._model_of(recipe)) == repr(GRU_CE)
    other_kernel = dataclasses.replace(mb.LSTM(3, 8), forward_step=mb.GRU(3, 8).forward_step)
    odd = mb.Sequence(other_kernel, output_size=2)
    assert mbd._portable(odd) is odd


def test_one_shard_is_the_core_bit_for_bit(client):
    params = LSTM.init_params(seed=3)
    xs, ys = data(LSTM, 30, 5, seed=4)
    same_bits(mbd.value_and_grad(client, LSTM, params, xs, ys, shards=1, budget=0.3),
              mb.value_and_grad(LSTM, params, xs, ys, budget=0.3))


@pytest.mark.parametrize("model", [GRU_CE, LSTM], ids=["gru-ce-h0-rows-first", "lstm-h0-rows-second"])
def test_h0_is_split_with_the_batch_and_its_gradient_joined(client, model):
    params = model.init_params(seed=5)
    xs, ys = data(model, 25, 6, seed=6)
    h0 = np.random.default_rng(7).standard_normal(model.state_shape(6))
    loss, grads, dh0, stats = mbd.value_and_grad(client, model, params, xs, ys, shards=3, h0=h0,
                                                 return_h0_grad=True, return_stats=True)
    want = oracle(model, params, xs, ys, (2, 2, 2), h0=h0, h0_axis=1 if model is LSTM else 0)
    same_bits((loss, grads), want[:2])
    assert np.array_equal(dh0, want[2])
    whole = mb.value_and_grad(model, params, xs, ys, h0=h0, return_h0_grad=True)
    assert np.allclose(dh0, whole[2], rtol=1e-12, atol=1e-16) and max_rel_diff((loss, grads), whole) < 1e-13
    assert stats.rows == ((0, 2), (2, 4), (4, 6)) and len(stats.shard_seconds) == 3
    assert set(stats.workers) <= set(client.scheduler_info()["workers"])


def test_dask_array_inputs_give_the_numpy_bits(client):
    params = LSTM.init_params(seed=8)
    xs, ys = data(LSTM, 30, 8, seed=9)
    want = mbd.value_and_grad(client, LSTM, params, xs, ys, shards=4, budget=0.25)
    # chunks that cut across the shards: each shard is assembled on the workers
    got = mbd.value_and_grad(client, LSTM, params, da.from_array(xs, chunks=(30, 3, 3)),
                             da.from_array(ys, chunks=(15, 8, 2)), shards=4, budget=0.25)
    same_bits(got, want)


def masked_cases(T, B):
    rng = np.random.default_rng(21)
    mask = (rng.random((T, B)) < 0.7).astype(np.float64)
    mask[:, 2:4] = 0.0                                   # a shard whose every step is masked out
    weights = rng.choice([0.0, 0.25, 0.5, 2.0], size=(T, B))   # dyadic: every count is exact
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0], lengths[-1] = 1, T
    return {"mask 0/1, a shard all masked": {"mask": mask},
            "mask weights": {"mask": weights},
            "lengths 1..T": {"lengths": lengths},
            "mask and lengths": {"mask": mask, "lengths": lengths}}


@pytest.mark.parametrize("case", list(masked_cases(20, 8)))
def test_masks_and_lengths_are_split_with_the_batch(client, case):
    extras = masked_cases(20, 8)[case]
    params = LSTM.init_params(seed=22)
    xs, ys = data(LSTM, 20, 8, seed=23)
    got = mbd.value_and_grad(client, LSTM, params, xs, ys, shards=4, budget=0.3, **extras)
    same_bits(got, oracle(LSTM, params, xs, ys, (2, 2, 2, 2), budget=0.3, **extras))
    assert 0 < max_rel_diff(got, mb.value_and_grad(LSTM, params, xs, ys, **extras)) < 1e-13


def test_loss_at_last_splits_one_target_per_sequence(client):
    model = mb.Sequence(mb.LSTM(input_size=3, hidden_size=8), output_size=2, loss_at="last")
    params = model.init_params(seed=24)
    xs, _ = data(model, 20, 8, seed=25)
    ys = np.random.default_rng(26).standard_normal((8, 2))
    lengths = np.array([20, 3, 7, 1, 20, 15, 9, 12])
    got = mbd.value_and_grad(client, model, params, xs, ys, shards=(3, 2, 3), lengths=lengths)
    same_bits(got, oracle(model, params, xs, ys, (3, 2, 3), lengths=lengths))
    assert 0 < max_rel_diff(got, mb.value_and_grad(model, params, xs, ys, lengths=lengths)) < 1e-13


def test_a_fully_masked_batch_is_refused_before_sending(nothing_sent):
    xs, ys = data(LSTM, 10, 4)
    mask = np.zeros((10, 4))
    mask[5:, 1] = 1.0
    with pytest.raises(ValueError, match="every loss term of the batch is masked out"):
        mbd.value_and_grad(nothing_sent, LSTM, LSTM.init_params(), xs, ys, shards=2, mask=mask,
                           lengths=np.array([10, 5, 10, 10]))


@pytest.mark.slow
def test_stacked_layers_token_inputs_and_per_layer_h0(client):
    model = mb.Sequence([mb.Embedding(11, 4), mb.LSTM(4, 6), mb.GRU(6, 6)], output_size=11, loss="cross_entropy")
    params = model.init_params(seed=27)
    rng = np.random.default_rng(28)
    xs, ys = rng.integers(0, 11, size=(15, 6)), rng.integers(0, 11, size=(15, 6))
    h0 = [rng.standard_normal((2, 6, 6)), rng.standard_normal((6, 6))]     # LSTM (h, c), then GRU
    lengths = np.array([15, 4, 9, 1, 15, 12])
    # here first: this process compiles the stack's sweep, the workers then load it from the cache
    whole = mb.value_and_grad(model, params, xs, ys, h0=h0, lengths=lengths, return_h0_grad=True)
    want = oracle(model, params, xs, ys, (2, 2, 2), budget=0.4, h0=h0, h0_axis=[1, 0], lengths=lengths)
    got = mbd.value_and_grad(client, model, params, xs, ys, shards=3, budget=0.4, h0=h0, lengths=lengths,
                             return_h0_grad=True)
    same_bits(got[:2], want[:2])
    assert all(np.array_equal(a, b) for a, b in zip(got[2], want[2]))
    assert 0 < max_rel_diff(got[:2], whole[:2]) < 1e-13
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-16) for a, b in zip(got[2], whole[2]))


def test_train_steps_equal_the_optimizer_on_the_oracle_gradients(client):
    params = LSTM.init_params(seed=10)
    lengths = np.array([20, 5, 11, 1, 20, 20, 3, 17])
    batches = [data(LSTM, 20, 8, seed=11), (*data(LSTM, 20, 8, seed=12), {"lengths": lengths})]
    opt = mb.Adam(1e-2)
    got, history = mbd.train(LSTM, params, batches, client=client, shards=2, budget=0.3, optimizer=opt,
                             steps=3, clip_norm=0.5, progress=False)
    current, state = {k: v.copy() for k, v in params.items()}, opt.init(params)
    losses = []
    for step in range(3):
        xs, ys = batches[step % 2][:2]
        loss, grads = oracle(LSTM, current, xs, ys, (4, 4), budget=0.3, lengths=lengths if step % 2 else None)
        grads, _ = mb.clip_by_global_norm(grads, 0.5)
        current, state = opt.update(current, grads, state)
        losses.append(loss)
    assert history["loss"] == losses and history["batch"] == [0, 1, 0] and history["updates"] == 3
    for k in params:
        assert np.array_equal(got[k], current[k]), k
    assert all(len(s.workers) == 2 for s in history["stats"])


def test_budget_error_names_the_shard(client):
    params = LSTM.init_params(seed=13)
    xs, ys = data(LSTM, 200, 6, seed=14)
    with pytest.raises(mb.MemoryBudgetError) as here:
        mb.value_and_grad(LSTM, params, xs[:, :4], ys[:, :4], budget=600, policy="hsm")
    with pytest.raises(mb.MemoryBudgetError) as info:
        mbd.value_and_grad(client, LSTM, params, xs, ys, shards=(4, 2), budget=600, policy="hsm")
    assert "shard 0 (batch rows 0..3, on worker tcp://" in str(info.value)
    assert info.value.least_bytes == here.value.least_bytes is not None


# ---- bad input: clear errors before anything is sent --------------------------------------

@pytest.fixture
def nothing_sent(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("work was sent")
    for name in ("scatter", "submit", "compute", "run"):
        monkeypatch.setattr(client, name, refuse)
    return client


@pytest.mark.parametrize("change, error, words", [
    ({"shards": 13}, ValueError, "shards=13 is more than the batch's 12 rows"),
    ({"shards": 5}, ValueError, "shards=(3, 3, 2, 2, 2)"),
    ({"shards": (6, 5)}, ValueError, "adds up to 11 rows but the batch has 12"),
    ({"shards": 0}, ValueError, "shards=0 must be an int >= 1"),
    ({"params": "float32"}, TypeError, "xs is float64 but params are float32"),
    ({"params": "int"}, TypeError, "params['cell.weight_ih'] has dtype int64"),
    ({"mask": np.ones((40, 11))}, ValueError, "mask has shape (40, 11), expected (40, 12)"),
    ({"weights": np.ones(12)}, ValueError, "weights= is an array this module does not know how to split"),
    ({"schedule": "x"}, ValueError, "schedule= is not taken here"),
    ({"budget": "lots"}, ValueError, "budget='lots' is not a size"),
    ({"policy": "hsm"}, ValueError, "policy='hsm' needs budget="),
    ({"ys": np.zeros((40, 10, 2))}, ValueError, "ys has shape (40, 10, 2) but xs has (T, batch) = (40, 12)"),
])
def test_bad_input_is_refused_before_sending(nothing_sent, change, error, words):
    params = LSTM.init_params(seed=0)
    xs, ys = data(LSTM, 40, 12)
    kwargs = {"shards": 4}
    kwargs.update(change)
    if kwargs.get("params") == "float32":
        params = LSTM.init_params(seed=0, dtype="float32")
    elif kwargs.get("params") == "int":
        params = {k: v.astype(np.int64) for k, v in params.items()}
    kwargs.pop("params", None)
    ys = kwargs.pop("ys", ys)
    with pytest.raises(error) as info:
        mbd.value_and_grad(nothing_sent, LSTM, params, xs, ys, **kwargs)
    assert words in str(info.value) and str(info.value).startswith("distributed.value_and_grad: ")


def test_train_bad_input_is_refused_before_sending(nothing_sent):
    params = LSTM.init_params(seed=0)
    xs, ys = data(LSTM, 10, 4)
    opt = mb.SGD(0.1)
    with pytest.raises(ValueError, match="batch 1: shards=4 does not divide the batch of 6 rows"):
        mbd.train(LSTM, params, [(xs, ys), data(LSTM, 10, 6)], client=nothing_sent, shards=4, optimizer=opt,
                  steps=1)
    with pytest.raises(TypeError, match="data\\(rng\\) draws batches on the client"):
        mbd.train(LSTM, params, lambda rng: (xs, ys), client=nothing_sent, shards=2, optimizer=opt, steps=1)
    with pytest.raises(ValueError, match="give exactly one of steps= "):
        mbd.train(LSTM, params, (xs, ys), client=nothing_sent, shards=2, optimizer=opt)
    with pytest.raises(ValueError, match="an int >= 1; got steps=0"):
        mbd.train(LSTM, params, (xs, ys), client=nothing_sent, shards=2, optimizer=opt, steps=0)


def test_closed_client_is_refused(client):
    other = distributed.Client(client.scheduler.address)
    other.close()
    xs, ys = data(LSTM, 5, 2)
    with pytest.raises(ValueError, match="client is closed, not running; pass an open distributed.Client"):
        mbd.value_and_grad(other, LSTM, LSTM.init_params(), xs, ys, shards=2)


BLOCK_IMPORT = '''
import sys

class _NoMemoptBptt:
    """A worker's environment without memopt_bptt: importing it fails."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "memopt_bptt":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoMemoptBptt())
'''


def test_a_worker_without_the_package_is_a_clear_error_not_a_hang(tmp_path):
    script = tmp_path / "no_memopt_bptt.py"
    script.write_text(BLOCK_IMPORT)
    xs, ys = data(LSTM, 5, 2)
    with local_cluster(1, preload=[str(script)]) as cluster, distributed.Client(cluster) as c:
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="cannot import memopt_bptt .*install memopt_bptt\\[dask\\]=="):
            mbd.value_and_grad(c, LSTM, LSTM.init_params(), xs, ys, shards=1)
        assert time.perf_counter() - t0 < 30


# ---- the same bits on any number of workers (last: it resizes the module's cluster) ---------------

def test_same_bits_on_one_two_and_four_workers(client):
    params = LSTM.init_params(seed=15)
    xs, ys = data(LSTM, 30, 8, seed=16)
    runs = {}
    cluster = client.cluster
    for n in (2, 4, 1):
        cluster.scale(n)
        client.wait_for_workers(n, timeout=60)
        while len(client.scheduler_info()["workers"]) != n:
            time.sleep(0.05)
        runs[n] = mbd.value_and_grad(client, LSTM, params, xs, ys, shards=4, budget=0.25, return_stats=True)
        # placed on n workers, but Dask may move a queued shard to an idle worker (work stealing, e.g. while
        # a worker just started is still importing): the shards ran on more than one of them when n > 1
        used = len(set(runs[n][2].workers))
        assert used <= n and (used > 1 or n == 1), (n, runs[n][2].workers)
    for n in (4, 1):
        same_bits(runs[n][:2], runs[2][:2])
    cluster.scale(2)
    client.wait_for_workers(2, timeout=60)


# ---- faults -----------------------------------------------------------------------------------

def worker_pids(c):
    return c.run(os.getpid)


@pytest.mark.slow
def test_a_worker_killed_mid_update_changes_nothing():
    model = mb.Sequence(mb.LSTM(input_size=3, hidden_size=16), output_size=2, lanes=1)
    params = model.init_params(seed=17)
    xs, ys = data(model, 4000, 4, seed=18)
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        want = mbd.value_and_grad(c, model, params, xs, ys, shards=4, budget=0.1, return_stats=True)
        pids = worker_pids(c)
        killed = []

        def kill_a_busy_worker():
            while not killed:
                busy = [w for w, keys in c.processing().items() if any("memopt_bptt-shard" in str(k) for k in keys)]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.01)
        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        got = mbd.value_and_grad(c, model, params, xs, ys, shards=4, budget=0.1, return_stats=True)
        killer.join(timeout=10)
        # the dead worker held shards' data: the update was sent again, its shards computed elsewhere
        assert killed and killed[0] not in got[2].workers and got[2].attempts >= 2, (killed, got[2])
        same_bits(got[:2], want[:2])


@pytest.mark.slow
def test_train_goes_on_when_a_worker_dies_between_updates():
    params = LSTM.init_params(seed=19)
    batch = data(LSTM, 30, 8, seed=20)
    opt = mb.SGD(0.05)
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        want, _ = mbd.train(LSTM, params, batch, client=c, shards=4, optimizer=opt, steps=3, progress=False)
        pids = worker_pids(c)

        def kill_one(update, current, history):
            if update == 0:
                os.kill(pids[history["stats"][0].workers[0]], signal.SIGKILL)
        got, history = mbd.train(LSTM, params, batch, client=c, shards=4, optimizer=opt, steps=3,
                                 progress=False, callback=kill_one)
        for k in params:
            assert np.array_equal(got[k], want[k]), k
        assert history["stats"][0].workers[0] not in history["stats"][2].workers
