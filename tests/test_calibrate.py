"""mb.calibrate: the split measured on this machine, kept on disk, taken by automatic models (issue 14, item 1)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt import _calibrate, _split


@pytest.fixture
def cal_file(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    monkeypatch.setenv("MEMOPT_BPTT_CALIBRATION", str(path))
    return path


def _data(model, T, batch, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, batch, model.input_size)),
            rng.standard_normal((T, batch, model.output_size)))


def test_pick_is_the_least_time_only_past_the_margin():
    rng = np.random.default_rng(0)
    names = ["lanes=1,unit_threads=1", "lanes=2", "unit_threads=2"]
    for _ in range(200):
        k = int(rng.integers(1, 4))
        over = {c: float(rng.uniform(0.5, 1.5)) for c in names[:k]}
        rule = names[int(rng.integers(0, k))]
        over[rule] = 1.0
        margin = float(rng.choice([0.0, 0.05, 0.2]))
        got = _calibrate.pick(over, rule, margin)
        # brute force: every candidate at least (1 - margin) faster than the rule, the fastest of them
        faster = sorted((t, c) for c, t in over.items() if t < 1.0 - margin)
        assert got == (faster[0][1] if faster else rule)


def test_a_kept_split_is_taken_by_automatic_models_of_its_class_only(cal_file):
    model = mb.Sequence(mb.LSTM(64, 256), output_size=16)
    assert _split.rule_split(model, 16) == (1, 2)
    key = _calibrate.class_key(model, 16)
    _calibrate._save(str(cal_file), key, {"lanes": 1, "unit_threads": 1, "rule": "unit_threads=2",
                                          "chosen": "lanes=1,unit_threads=1", "T": 500,
                                          "over_rule": {"lanes=1,unit_threads=1": 0.5, "unit_threads=2": 1.0}})
    # the same class: hidden 200-362, input 46-90, batch 12-22
    for m, batch in ((model, 16), (mb.Sequence(mb.LSTM(70, 300), output_size=4), 20)):
        assert m.lane_batches(batch) == (batch,) and m.unit_split(batch) == ((0, m.cell.hidden_size),)
        assert m.sizes(batch=batch, dtype="float32").unit_threads == 1
        text = m.describe_split(batch)
        assert "calibrated on this machine" in text and "0.50x" in text and str(cal_file) in text
    # other classes, explicit splits and a calibration turned off keep the rule
    assert mb.Sequence(mb.LSTM(64, 256), output_size=16).lane_batches(64) == (32, 32)
    assert mb.Sequence(mb.LSTM(64, 512), output_size=16).unit_split(16) == ((0, 256), (256, 512))
    assert mb.Sequence(mb.GRU(64, 256), output_size=16).lane_batches(16) == (16,)
    assert mb.Sequence(mb.LSTM(64, 256), output_size=16, lanes=1).unit_split(16) == ((0, 128), (128, 256))
    assert mb.Sequence(mb.LSTM(64, 256), output_size=16, unit_threads=2).unit_split(16) == ((0, 128), (128, 256))
    os.environ["MEMOPT_BPTT_CALIBRATION"] = "off"
    assert model.unit_split(16) == ((0, 128), (128, 256))
    assert "calibrated" not in model.describe_split(16)


@pytest.mark.slow  # compiles and times float32 sweeps of three splits: 85 s on a slow 2-core machine
def test_calibrate_measures_keeps_and_gives_the_bits_of_the_explicit_split(cal_file):
    model = mb.Sequence(mb.LSTM(8, 64), output_size=3)
    batch = 8
    cands = _calibrate.candidates(model, batch)
    assert set(cands) == {"lanes=1,unit_threads=1", "lanes=2", "unit_threads=2"}
    result = mb.calibrate(model, batch, dtype="float64", seconds=0.3, rounds=3)
    assert set(result.seconds) == set(cands) and result.rounds == 3 and result.T >= 32
    assert result.over_rule[result.rule] == 1.0
    best = min(result.over_rule.values())
    assert result.chosen == (min(result.over_rule, key=result.over_rule.get) if best < 0.95 else result.rule)
    assert (result.lanes, result.unit_threads) == cands[result.chosen]
    stored = json.loads(cal_file.read_text())["entries"][_calibrate.class_key(model, batch)]
    assert (stored["lanes"], stored["unit_threads"], stored["chosen"]) == (result.lanes, result.unit_threads,
                                                                          result.chosen)
    fresh = mb.Sequence(mb.LSTM(8, 64), output_size=3)
    assert len(fresh.lane_batches(batch)) == result.lanes and len(fresh.unit_split(batch)) == result.unit_threads
    explicit = mb.Sequence(mb.LSTM(8, 64), output_size=3, lanes=result.lanes, unit_threads=result.unit_threads)
    params = fresh.init_params(seed=2)
    xs, ys = _data(fresh, 60, batch)
    loss, grads = mb.value_and_grad(fresh, params, xs, ys)
    for other, kw in itertools.product((fresh, explicit), ({}, {"budget": 0.2, "policy": "msm"}, {"policy": "hsm",
                                                                                                   "budget": 0.3})):
        loss2, grads2 = mb.value_and_grad(other, params, xs, ys, **kw)
        assert loss2 == loss and all(np.array_equal(grads[k], grads2[k]) for k in grads)
    # and within rounding of plain BPTT without a split (an independent oracle: the unsplit sweep)
    one = mb.Sequence(mb.LSTM(8, 64), output_size=3, lanes=1, unit_threads=1)
    loss1, grads1 = mb.value_and_grad(one, params, xs, ys)
    assert abs(loss1 - loss) < 1e-12 and all(np.allclose(grads[k], grads1[k], rtol=1e-10, atol=1e-13) for k in grads)


def test_a_model_with_one_candidate_keeps_the_rule_untimed(cal_file):
    model = mb.Sequence(mb.Elman(16, 512), output_size=4)  # no unit kernels; a second lane's accumulator too large
    result = mb.calibrate(model, 16, seconds=0.2)
    assert result.seconds == {} and result.chosen == result.rule == "lanes=1,unit_threads=1"
    assert "only candidate" in str(result)


def test_an_unreadable_file_warns_and_the_rule_decides(cal_file):
    cal_file.write_text("{not json")
    model = mb.Sequence(mb.LSTM(64, 256), output_size=16)
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert model.unit_split(16) == ((0, 128), (128, 256))
    cal_file.write_text(json.dumps({"version": 999, "entries": {"x": 1}}))
    assert model.unit_split(16) == ((0, 128), (128, 256))


@pytest.mark.parametrize("kwargs, match", [
    ({"batch": 0}, "batch=0 must be a positive int"),
    ({"batch": 16, "seconds": -1.0}, "seconds=-1.0 must be a positive number"),
    ({"batch": 16, "rounds": 0}, "rounds=0 must be a positive int"),
    ({"batch": 16, "seconds": float("inf")}, "seconds=inf must be a positive number"),
    ({"batch": 16.0}, "batch=16.0 must be a positive int"),
    ({"batch": 16, "margin": 1.5}, r"margin=1.5 must be a number in \[0, 1\)"),
    ({"batch": 16, "dtype": "int32"}, "dtype='int32' must be float32 or float64"),
])
def test_bad_arguments_are_named(cal_file, kwargs, match):
    model = mb.Sequence(mb.LSTM(8, 64), output_size=3)
    with pytest.raises(ValueError, match=match):
        mb.calibrate(model, **kwargs)
    assert not cal_file.exists()


def test_an_explicit_split_or_a_calibration_turned_off_is_refused(cal_file, monkeypatch):
    with pytest.raises(ValueError, match="asks for its split"):
        mb.calibrate(mb.Sequence(mb.LSTM(8, 64), output_size=3, lanes=1), 8)
    with pytest.raises(TypeError, match="must be an mb.Sequence"):
        mb.calibrate(mb.LSTM(8, 64), 8)
    monkeypatch.setenv("MEMOPT_BPTT_CALIBRATION", "off")
    with pytest.raises(ValueError, match="MEMOPT_BPTT_CALIBRATION=off"):
        mb.calibrate(mb.Sequence(mb.LSTM(8, 64), output_size=3), 8)


def test_another_cpu_does_not_read_this_machines_entries(cal_file):
    model = mb.Sequence(mb.LSTM(64, 256), output_size=16)
    _calibrate._save(str(cal_file), _calibrate.class_key(model, 16),
                     {"lanes": 1, "unit_threads": 1, "rule": "unit_threads=2", "chosen": "lanes=1,unit_threads=1",
                      "T": 500, "over_rule": {"lanes=1,unit_threads=1": 0.5}})
    code = ("import memopt_bptt as mb; m = mb.Sequence(mb.LSTM(64, 256), output_size=16); "
            "print(len(m.unit_split(16)))")
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"  # the rule's two unit threads: the entry is this CPU's, not haswell's
    assert len(model.unit_split(16)) == 1


def test_the_cli_keeps_what_mb_calibrate_measures(cal_file, capsys):
    from memopt_bptt.cli import main
    args = ["calibrate", "--cell", "lstm", "--input", "8", "--hidden", "64", "--batch", "8", "--dtype", "float64",
            "--seconds", "0.3", "--rounds", "3"]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would keep" in out and "unit_threads=2" in out and "lanes=2" in out and not cal_file.exists()
    assert main(args) == 0
    out = capsys.readouterr().out
    entry = json.loads(cal_file.read_text())["entries"]
    (key, kept), = entry.items()
    assert f"kept {kept['chosen']}" in out and str(cal_file) in out and "now: " in out
    model = mb.Sequence(mb.LSTM(8, 64), output_size=4)
    assert key == _calibrate.class_key(model, 8)
    assert (len(model.lane_batches(8)), len(model.unit_split(8))) == (kept["lanes"], kept["unit_threads"])


def test_the_cli_refuses_to_keep_with_calibration_off(monkeypatch, capsys):
    from memopt_bptt.cli import main
    monkeypatch.setenv("MEMOPT_BPTT_CALIBRATION", "off")
    assert main(["calibrate", "--hidden", "64", "--batch", "8"]) == 2
    err = capsys.readouterr().err
    assert "MEMOPT_BPTT_CALIBRATION=off" in err and "--dry-run" in err
    assert main(["calibrate", "--hidden", "64", "--seconds", "-1"]) == 2
    assert "--seconds" in capsys.readouterr().err


def test_auto_calibration_runs_once_per_class_and_only_when_asked(cal_file, monkeypatch, capsys):
    model = mb.Sequence(mb.LSTM(8, 64), output_size=3)
    params = model.init_params(seed=3)
    xs, ys = _data(model, 40, 8)
    mb.value_and_grad(model, params, xs, ys)  # not asked: nothing measured, nothing kept
    assert not cal_file.exists() and "calibrating" not in capsys.readouterr().err
    monkeypatch.setenv("MEMOPT_BPTT_CALIBRATION_AUTO", "1")
    monkeypatch.setattr(_calibrate, "_TRIED", set())
    loss, grads = mb.value_and_grad(model, params, xs, ys)
    assert "calibrating the split" in capsys.readouterr().err
    (key, kept), = json.loads(cal_file.read_text())["entries"].items()
    assert key == _calibrate.class_key(model, 8)
    explicit = mb.Sequence(mb.LSTM(8, 64), output_size=3, lanes=kept["lanes"], unit_threads=kept["unit_threads"])
    loss2, grads2 = mb.value_and_grad(explicit, params, xs, ys)  # the first call already ran the kept split
    assert loss2 == loss and all(np.array_equal(grads[k], grads2[k]) for k in grads)
    mtime = cal_file.stat().st_mtime_ns
    mb.value_and_grad(model, params, xs, ys, budget=0.3)  # an entry exists: no second calibration
    assert cal_file.stat().st_mtime_ns == mtime and "calibrating" not in capsys.readouterr().err
