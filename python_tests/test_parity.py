"""The streaming-parity experiment: model, training pieces, run directory, resume, CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import grokfast
from grokfast.cli import main
from grokfast.experiments import ParityConfig, run_parity
from grokfast.models import SequenceRNN
from grokfast.tasks import StreamingParity
from grokfast.train import (MetricsWriter, capture_rng_state, evaluate, latest_checkpoint,
                            load_checkpoint, make_generator, read_metrics, restore_rng_state,
                            save_checkpoint, sequence_loss, train_epoch)

# A run small enough for the default suite: seconds, not minutes.
TINY = ["--epochs", "4", "--hidden", "12", "--max-length", "5", "--eval-lengths", "25,60",
        "--eval-count", "3", "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]


def tiny_config(**kw) -> ParityConfig:
    base = dict(epochs=4, hidden=12, max_length=5, eval_lengths=(25, 60), eval_count=3,
                batch_size=8, checkpoint_every=2)
    base.update(kw)
    return ParityConfig(**base)


# ---- model ----------------------------------------------------------------------------------

def test_model_defaults_match_the_paper():
    m = SequenceRNN(generator=torch.Generator().manual_seed(0))
    r = m.rnn
    assert (m.num_symbols, m.num_outputs, m.hidden_size, r.activation) == (2, 2, 100, "relu")
    assert torch.count_nonzero(r.bias) == 0 and torch.count_nonzero(r.readout.bias) == 0
    torch.testing.assert_close(m.h0, torch.ones(100))
    assert "h0" in dict(m.named_buffers()) and "h0" not in dict(m.named_parameters())
    # xavier normal, gain 0.1: std = 0.1 * sqrt(2 / (fan_in + fan_out))
    expected = 0.1 * math.sqrt(2 / 200)
    assert abs(r.weight_hh.std().item() / expected - 1) < 0.05
    assert abs(r.readout.weight.std().item() / (0.1 * math.sqrt(2 / 102)) - 1) < 0.2
    learnt = SequenceRNN(hidden_size=8, learn_h0=True)
    assert "h0" in dict(learnt.named_parameters())


def test_model_init_is_seeded():
    a = SequenceRNN(hidden_size=16, generator=torch.Generator().manual_seed(3))
    b = SequenceRNN(hidden_size=16, generator=torch.Generator().manual_seed(3))
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


def test_model_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hidden_size: expected a positive integer, got -3"):
        SequenceRNN(hidden_size=-3)
    with pytest.raises(ValueError, match="init_scale: expected a positive number, got 0"):
        SequenceRNN(init_scale=0)


@pytest.mark.parametrize("outputs", ["all", "last"])
def test_one_hot_and_token_inputs_agree(outputs):
    torch.manual_seed(0)
    m = SequenceRNN(hidden_size=24, learn_h0=True)
    ids = torch.randint(0, 2, (6, 9))
    one_hot = F.one_hot(ids, 2).float()
    y_tok = m(ids, outputs=outputs)
    grads_tok = torch.autograd.grad(y_tok.square().sum(), list(m.parameters()))
    y_hot = m(one_hot, outputs=outputs)
    grads_hot = torch.autograd.grad(y_hot.square().sum(), list(m.parameters()))
    torch.testing.assert_close(y_tok, y_hot)
    for g_tok, g_hot in zip(grads_tok, grads_hot):
        torch.testing.assert_close(g_tok, g_hot)


def test_model_matches_torch_rnn_from_the_same_weights():
    torch.manual_seed(1)
    m = SequenceRNN(hidden_size=20, init_scale=1.0)
    ref = torch.nn.RNN(2, 20, nonlinearity="relu", batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(m.rnn.weight_ih)
        ref.weight_hh_l0.copy_(m.rnn.weight_hh)
        ref.bias_ih_l0.zero_()
        ref.bias_hh_l0.zero_()
    ids = torch.randint(0, 2, (4, 300))
    with torch.no_grad():
        h, _ = ref(F.one_hot(ids, 2).float(), torch.ones(1, 4, 20))
        torch.testing.assert_close(m(ids), m.rnn.readout(h), rtol=1e-4, atol=1e-5)


def test_bias_lr_scale_2_reproduces_torch_rnn_sgd():
    """nn.RNN's two recurrent biases each take a full SGD step; one bias at lr x 2 matches."""
    torch.manual_seed(2)
    m = SequenceRNN(hidden_size=10, init_scale=1.0)
    ref = torch.nn.RNN(2, 10, nonlinearity="relu", batch_first=True)
    head = torch.nn.Linear(10, 2)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(m.rnn.weight_ih)
        ref.weight_hh_l0.copy_(m.rnn.weight_hh)
        ref.bias_ih_l0.zero_()
        ref.bias_hh_l0.zero_()
        head.weight.copy_(m.rnn.readout.weight)
        head.bias.zero_()
    opt = torch.optim.SGD(m.param_groups(0.1, 2.0), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD([*ref.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    ids = torch.randint(0, 2, (8, 6))
    t = ids.sum(1) % 2
    for _ in range(3):
        opt.zero_grad()
        sequence_loss(m(ids, outputs="last"), t).backward()
        opt.step()
        opt_ref.zero_grad()
        _, h_n = ref(F.one_hot(ids, 2).float(), torch.ones(1, 8, 10))
        sequence_loss(head(h_n[0]), t).backward()
        opt_ref.step()
    torch.testing.assert_close(m.rnn.bias, ref.bias_ih_l0 + ref.bias_hh_l0)
    torch.testing.assert_close(m.rnn.weight_hh, ref.weight_hh_l0)


# ---- training pieces ------------------------------------------------------------------------

def test_sequence_loss():
    y = torch.randn(5, 7, 2)
    t = torch.randint(0, 2, (5, 7))
    torch.testing.assert_close(sequence_loss(y, t, "mse"),
                               torch.nn.MSELoss()(y, F.one_hot(t, 2).float()))
    torch.testing.assert_close(sequence_loss(y, t, "ce"),
                               F.cross_entropy(y.reshape(-1, 2), t.reshape(-1)))
    with pytest.raises(ValueError, match="loss: expected one of"):
        sequence_loss(y, t, "l1")


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


def test_train_epoch_visits_lengths_in_batches():
    task = StreamingParity(10)
    model = SequenceRNN(hidden_size=8)
    opt = CountingSGD(model.parameters(), lr=0.02)
    CountingSGD.steps = 0
    stats = train_epoch(model, opt, task.train_set, batch_size=128,
                        generator=torch.Generator().manual_seed(0))
    assert CountingSGD.steps == 7 + 2 + 4 + 8  # lengths 1..7 one batch; 256, 512, 1024
    assert 0 <= stats["train_accuracy"] <= 1 and stats["train_loss"] > 0
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        train_epoch(model, opt, task.train_set, batch_size=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="loss_on: expected one of"):
        train_epoch(model, opt, task.train_set, batch_size=8, generator=torch.Generator(),
                    loss_on="first")


def test_training_on_the_emulated_cuda_kernel_matches_cpu():
    task = StreamingParity(6)
    data = task.eval_data([25, 300], count=3, seed=0)
    results = []
    for backend in ("cpu", "cuda-emulated"):
        model = SequenceRNN(hidden_size=16, backend=backend,
                            generator=torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(model.param_groups(0.02), lr=0.02)
        stats = train_epoch(model, opt, task.train_set, batch_size=16,
                            generator=torch.Generator().manual_seed(0))
        results.append((stats, evaluate(model, data), model.rnn.weight_hh.detach()))
    (s_cpu, e_cpu, w_cpu), (s_gpu, e_gpu, w_gpu) = results
    assert s_cpu["train_loss"] == pytest.approx(s_gpu["train_loss"], rel=1e-5)
    for n in ("25", "300"):
        assert e_cpu["loss"][n] == pytest.approx(e_gpu["loss"][n], rel=1e-4)
    torch.testing.assert_close(w_cpu, w_gpu, rtol=1e-4, atol=1e-6)


def test_evaluate_at_length_10000_matches_the_autograd_path():
    task = StreamingParity(3)
    model = SequenceRNN(hidden_size=16)
    data = task.eval_data([10000], count=2, seed=0)
    result = evaluate(model, data)
    y = model(data[10000].inputs)  # with grad: the materialising path
    assert result["accuracy"]["10000"] == pytest.approx(
        (y.argmax(-1) == data[10000].targets).double().mean().item())
    assert result["loss"]["10000"] == pytest.approx(
        sequence_loss(y, data[10000].targets).item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("outputs", [2, 3])
def test_evaluate_metrics_equal_sequence_loss_and_argmax(loss, outputs):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(7, 50, outputs, generator=g)
    y[0, :10] = 0.5  # ties: argmax takes the first output
    t = torch.randint(0, outputs, (7, 50), generator=g)
    result = evaluate(lambda x, outputs: y, {50: (None, t)}, loss=loss)
    assert result["loss"]["50"] == pytest.approx(sequence_loss(y, t, loss).item(), rel=1e-6)
    assert result["accuracy"]["50"] == pytest.approx((y.argmax(-1) == t).double().mean().item())


def test_checkpoint_rng_and_metrics_files(tmp_path):
    g = make_generator(0, "shuffle")
    state = capture_rng_state({"g": g})
    a = torch.randperm(10, generator=g)
    save_checkpoint(tmp_path / "c" / "epoch_000003.pt", {"rng": state, "x": 1})
    assert latest_checkpoint(tmp_path / "c").name == "epoch_000003.pt"
    restore_rng_state(load_checkpoint(tmp_path / "c" / "epoch_000003.pt")["rng"], {"g": g})
    assert torch.equal(torch.randperm(10, generator=g), a)
    assert list((tmp_path / "c").iterdir()) == [tmp_path / "c" / "epoch_000003.pt"]  # no temp
    with pytest.raises(FileNotFoundError, match="checkpoint: no file"):
        load_checkpoint(tmp_path / "missing.pt")

    w = MetricsWriter(tmp_path / "m.jsonl")
    for e in (1, 2, 3):
        w.write({"epoch": e, "loss": float("nan") if e == 2 else 0.5})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # a torn line from an interrupted append
    assert [r["epoch"] for r in read_metrics(tmp_path / "m.jsonl")] == [1, 2, 3]
    assert read_metrics(tmp_path / "m.jsonl")[1]["loss"] is None
    MetricsWriter(tmp_path / "m.jsonl", keep=lambda r: r["epoch"] <= 2)
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 2


# ---- runs -----------------------------------------------------------------------------------

def _strip_times(records):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "wall_seconds")}
            for r in records]


def test_cli_short_run_writes_a_valid_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["parity", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "generalized" in printed and "epochs:" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "parity" and config["epochs"] == 4
    assert config["lr"] == 0.02 and config["init_scale"] == 0.1 and config["loss"] == "mse"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert set(r) >= {"train_loss", "train_accuracy", "loss", "accuracy", "wall_seconds"}
        assert set(r["accuracy"]) == set(r["loss"]) == {"25", "60"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 4 and set(summary["accuracy"]) == {"25", "60"}
    assert summary["generalized_epoch"] is None or isinstance(summary["generalized_epoch"], int)
    assert summary["wall_seconds"] > 0 and summary["accuracy"] == records[-1]["accuracy"]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["epoch_000000.pt", "epoch_000002.pt", "epoch_000004.pt", "final.pt"]
    for name in ("loss.png", "accuracy.png"):
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    assert final["epoch"] == 4 and "weight_hh" in "".join(final["model"])


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = run_parity(tiny_config(seed=5), tmp_path / "a", progress=False)
    b = run_parity(tiny_config(seed=5), tmp_path / "b", progress=False)
    run_parity(tiny_config(seed=6), tmp_path / "c", progress=False)
    ra, rb, rc = (_strip_times(read_metrics(tmp_path / n / "metrics.jsonl")) for n in "abc")
    assert ra == rb and ra != rc
    assert a["accuracy"] == b["accuracy"]


def _final_model(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    assert main(["parity", *TINY, "--epochs", "6", "--out", str(straight)]) == 0
    # Extend a finished 3-epoch run to 6 epochs.
    extended = tmp_path / "extended"
    assert main(["parity", *TINY, "--epochs", "3", "--out", str(extended)]) == 0
    with pytest.raises(KeyboardInterrupt):  # an interrupted extension drops the old summary
        run_parity(tiny_config(epochs=6), extended, resume=True, progress=False,
                   on_epoch=lambda r: (_ for _ in ()).throw(KeyboardInterrupt))
    assert not (extended / "summary.json").exists()
    assert main(["parity", "--resume", "--epochs", "6", "--out", str(extended),
                 "--no-progress"]) == 0
    # Interrupt a 6-epoch run during epoch 5 (last checkpoint: epoch 4), then resume it.
    interrupted = tmp_path / "interrupted"

    def stop(record):
        if record["epoch"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_parity(tiny_config(epochs=6), interrupted, progress=False, on_epoch=stop)
    assert len(read_metrics(interrupted / "metrics.jsonl")) == 5
    assert not (interrupted / "summary.json").exists()
    assert main(["parity", "--resume", "--out", str(interrupted), "--no-progress"]) == 0

    expected = _strip_times(read_metrics(straight / "metrics.jsonl"))
    reference = _final_model(straight)
    for run in (extended, interrupted):
        assert _strip_times(read_metrics(run / "metrics.jsonl")) == expected
        for name, tensor in _final_model(run).items():
            assert torch.equal(tensor, reference[name]), name
        s = json.loads((run / "summary.json").read_text())
        assert s["epochs"] == 6 and s["accuracy"] == expected[-1]["accuracy"]


def test_extending_a_run_with_eval_every_matches_a_straight_run(tmp_path):
    run_parity(tiny_config(epochs=4, eval_every=2), tmp_path / "straight", progress=False)
    short = run_parity(tiny_config(epochs=3, eval_every=2), tmp_path / "ext", progress=False)
    assert short["accuracy"]  # the last epoch is always evaluated
    run_parity(tiny_config(epochs=4, eval_every=2), tmp_path / "ext", resume=True,
               progress=False)
    straight = _strip_times(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert [("accuracy" in r) for r in straight] == [False, True, False, True]
    assert _strip_times(read_metrics(tmp_path / "ext" / "metrics.jsonl")) == straight


def test_resume_of_a_finished_run_is_a_no_op(tmp_path):
    out = tmp_path / "run"
    first = run_parity(tiny_config(epochs=2), out, progress=False)
    again = run_parity(tiny_config(epochs=2), out, resume=True, progress=False)
    assert again["accuracy"] == first["accuracy"] and len(read_metrics(out / "metrics.jsonl")) == 2


def test_resume_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["parity", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["parity", *TINY, "--out", str(out)]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["parity", "--resume", "--out", str(out), "--lr", "0.5"]) == 2
    assert "--lr: a resumed run keeps the setting in its config.json (0.02); got 0.5" \
        in capsys.readouterr().err
    assert main(["parity", "--resume", "--out", str(out), "--epochs", "1"]) == 2
    assert "--epochs: the run already reached epoch 2; got 1" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["epochs"] == 2  # left untouched
    assert main(["parity", "--resume"]) == 2
    assert "--resume: needs --out DIR" in capsys.readouterr().err
    assert main(["parity", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume (no config.json)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "-3"], "--hidden: expected a positive integer, got -3"),
    (["--hidden", "0"], "--hidden: expected a positive integer, got 0"),
    (["--epochs", "-1"], "--epochs: expected a positive integer, got -1"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["--eval-count", "0"], "--eval-count: expected a positive integer, got 0"),
    (["--eval-every", "-2"], "--eval-every: expected a positive integer, got -2"),
    (["--checkpoint-every", "0"], "--checkpoint-every: expected a positive integer"),
    (["--max-length", "0"], "--max-length: expected a sequence length >= 1, got 0"),
    (["--max-length", "40"], "--max-length: expected at most 20"),
    (["--eval-lengths", "0"], "--eval-lengths: sequence lengths must be integers >= 1, got 0"),
    (["--eval-lengths", "25", "-5"], "--eval-lengths: sequence lengths must be integers >= 1"),
    (["--eval-lengths", "25,25"], "--eval-lengths: expected distinct lengths"),
    (["--eval-lengths", "ten"], "expected integers separated by commas or spaces"),
    (["--train-fraction", "0"], r"--train-fraction: expected a fraction in (0, 1], got 0.0"),
    (["--train-fraction", "1.5"], r"--train-fraction: expected a fraction in (0, 1], got 1.5"),
    (["--train-fraction", "-0.2"], r"--train-fraction: expected a fraction in (0, 1]"),
    (["--train-fraction", "nan"], r"--train-fraction: expected a fraction in (0, 1]"),
    (["--init-scale", "0"], "--init-scale: expected a positive number, got 0.0"),
    (["--lr", "-0.1"], "--lr: expected a positive number, got -0.1"),
    (["--lr", "inf"], "--lr: expected a positive number, got inf"),
    (["--bias-lr-scale", "-1"], "--bias-lr-scale: expected a non-negative number, got -1.0"),
    (["--seed", "-1"], "--seed: expected a non-negative integer, got -1"),
    (["--device", "tpu"], "--device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    (["--device", "cpu:3"], "--device: expected 'cpu', 'cuda' or 'cuda:N'"),
    (["--hidden", "1.5"], "argument --hidden: invalid int value: '1.5'"),
    (["--loss", "l1"], "argument --loss: invalid choice: 'l1'"),
])
def test_bad_flags_give_clear_errors(argv, message, capsys, tmp_path):
    assert main(["parity", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(grokfast.backends()["cuda"], reason="CUDA is usable here")
def test_cuda_device_without_a_gpu_is_a_clear_error(capsys):
    assert main(["parity", "--device", "cuda"]) == 2
    assert "--device: 'cuda' is not usable here" in capsys.readouterr().err


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--train-fraction: expected a fraction"):
        ParityConfig(train_fraction=0).validate()
    with pytest.raises(ValueError, match="--activation: expected one of tanh, relu"):
        ParityConfig(activation="gelu").validate()
    with pytest.raises(ValueError, match="--eval-lengths: expected one or more"):
        ParityConfig(eval_lengths=()).validate()
    with pytest.raises(ValueError, match=r"config: unknown setting\(s\) \['hiden'\]"):
        ParityConfig.from_dict({"hiden": 3})
    assert ParityConfig.from_dict(ParityConfig().to_dict()) == ParityConfig()


def test_help_exits_cleanly(capsys):
    assert main(["parity", "--help"]) == 0
    assert "--init-scale" in capsys.readouterr().out
    assert main([]) == 2


# ---- the reproduction (slow: minutes per seed; pytest -m slow) ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_reproduction_generalizes_to_length_10000(seed, tmp_path):
    summary = run_parity(ParityConfig(seed=seed), tmp_path / f"seed{seed}", progress=False)
    assert summary["generalized_epoch"] is not None
    assert all(a == 1.0 for a in summary["accuracy"].values())


# ---- automaton extraction during training and from saved runs ------------------------------

from grokfast.automata import MooreMachine, parity  # noqa: E402
from grokfast.automata.dynamics import PHASES, phase_labels  # noqa: E402
from grokfast.experiments.parity import EXTRACTION_KEYS, extract_run  # noqa: E402


def test_extraction_metrics_summary_and_artefacts(tmp_path):
    out = tmp_path / "run"
    summary = run_parity(tiny_config(epochs=4), out, progress=False)
    records = read_metrics(out / "metrics.jsonl")
    for r in records:
        assert set(EXTRACTION_KEYS) <= set(r)
        assert r["phase"] in PHASES and r["num_states"] >= r["num_states_minimized"] >= 1
        assert 0 <= r["output_accuracy"] <= 1 and r["undefined_transitions"] >= 0
        assert r["merged_pairs"] >= r["merged_agreeing_pairs"] >= 0
        L = 5
        assert len(r["agreeing_unmerged_by_length"]) == L + 1
        assert all(len(row) == L + 1 for row in r["agreeing_unmerged_by_length"])
    assert [r["phase"] for r in records] == phase_labels(records)
    last = records[-1]
    assert summary["final_num_states"] == last["num_states"]
    assert summary["final_num_states_minimized"] == last["num_states_minimized"]
    assert summary["final_phase"] == last["phase"]
    assert "finite_automaton_epoch" in summary
    assert json.loads((out / "summary.json").read_text())["final_phase"] == last["phase"]
    machine = MooreMachine.from_json(out / "automaton.json")
    assert machine.num_states == last["num_states"]
    assert machine.minimize().num_states == last["num_states_minimized"]
    assert (out / "automaton.dot").read_text().startswith("digraph")
    assert (out / "figures" / "states.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the CLI re-extracts the final checkpoint with the run's settings: the same machine
    assert extract_run(out, write=False)["extraction"].machine == machine


def test_extract_every_and_disabled_extraction(tmp_path):
    run_parity(tiny_config(epochs=5, extract_every=2), tmp_path / "k2", progress=False)
    records = read_metrics(tmp_path / "k2" / "metrics.jsonl")
    assert [("num_states" in r) for r in records] == [False, True, False, True, True]
    summary = run_parity(tiny_config(epochs=3, extract_every=0), tmp_path / "off",
                         progress=False)
    assert not any("num_states" in r for r in read_metrics(tmp_path / "off" / "metrics.jsonl"))
    assert summary["final_num_states"] is None and summary["final_phase"] is None
    assert not (tmp_path / "off" / "automaton.json").exists()
    assert not (tmp_path / "off" / "figures" / "states.png").exists()


def test_resume_with_extraction_equals_an_uninterrupted_run(tmp_path):
    cfg = dict(epochs=6, extract_every=2, extract_method="leader", extract_eps_rel=0.2)
    run_parity(tiny_config(**cfg), tmp_path / "straight", progress=False)

    def stop(record):
        if record["epoch"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_parity(tiny_config(**cfg), tmp_path / "cut", progress=False, on_epoch=stop)
    run_parity(tiny_config(**cfg), tmp_path / "cut", resume=True, progress=False)
    # a finished 3-epoch run (extracted at its last epoch 3) extended to 6
    run_parity(tiny_config(**{**cfg, "epochs": 3}), tmp_path / "ext", progress=False)
    run_parity(tiny_config(**cfg), tmp_path / "ext", resume=True, progress=False)
    expected = _strip_times(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert [("phase" in r) for r in expected] == [False, True, False, True, False, True]
    reference = _final_model(tmp_path / "straight")
    for name in ("cut", "ext"):
        assert _strip_times(read_metrics(tmp_path / name / "metrics.jsonl")) == expected
        for key, tensor in _final_model(tmp_path / name).items():
            assert torch.equal(tensor, reference[key]), key
        assert (tmp_path / name / "automaton.json").read_text() == \
            (tmp_path / "straight" / "automaton.json").read_text()


def test_extraction_does_not_change_training(tmp_path):
    run_parity(tiny_config(epochs=3), tmp_path / "on", progress=False)
    run_parity(tiny_config(epochs=3, extract_every=0), tmp_path / "off", progress=False)
    on = _strip_times(read_metrics(tmp_path / "on" / "metrics.jsonl"))
    off = _strip_times(read_metrics(tmp_path / "off" / "metrics.jsonl"))
    assert [{k: v for k, v in r.items() if k not in EXTRACTION_KEYS} for r in on] == off


@pytest.mark.parametrize("argv, message", [
    (["--extract-every", "-1"], "--extract-every: expected an integer >= 0 (0 disables"),
    (["--extract-eps", "-0.5"], "--extract-eps: expected a number >= 0, got -0.5"),
    (["--extract-eps-rel", "nan"], "--extract-eps-rel: expected a number >= 0, got nan"),
    (["--extract-eps", "1", "--extract-eps-rel", "0.2"],
     "--extract-eps: give either --extract-eps (absolute) or --extract-eps-rel (relative)"),
    (["--extract-method", "kmeans"], "argument --extract-method: invalid choice: 'kmeans'"),
])
def test_bad_extraction_flags(argv, message, capsys, tmp_path):
    assert main(["parity", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--extract-method: expected one of components, leader"):
        ParityConfig(extract_method="kmeans").validate()


def test_automaton_png_when_dot_is_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"  # writes a PNG signature to the file after -o
    fake.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && "
                    "printf '\\211PNG\\r\\n\\032\\n' > \"$2\"; shift; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    run_parity(tiny_config(epochs=2), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "figures" / "automaton.png").read_bytes()[:4] == b"\x89PNG"


def _parity_rnn_run(tmp_path):
    """A run directory holding a hand-made checkpoint: a 4-unit ReLU RNN that computes
    parity exactly (units: even-after-0, even-after-1, odd-after-0, odd-after-1)."""
    run = tmp_path / "made"
    (run / "checkpoints").mkdir(parents=True)
    config = tiny_config(hidden=4, epochs=1)
    (run / "config.json").write_text(json.dumps({"experiment": "parity", **config.to_dict()}))
    model = SequenceRNN(2, 2, 4)
    even, odd = [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]
    with torch.no_grad():
        model.rnn.weight_hh.copy_(torch.tensor([even, odd, odd, even]))
        model.rnn.weight_ih.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0],
                                                [0.0, 1.0]]))
        model.rnn.bias.fill_(-1.0)
        model.rnn.readout.weight.copy_(torch.tensor([even, odd]))
        model.rnn.readout.bias.zero_()
        model.h0.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    save_checkpoint(run / "checkpoints" / "epoch_000007.pt",
                    {"epoch": 7, "model": model.state_dict()})
    return run


def test_cli_extract_on_a_fabricated_checkpoint(tmp_path, capsys):
    run = _parity_rnn_run(tmp_path)
    assert main(["extract", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "4 raw, 2 minimized" in printed and "equals parity:   yes" in printed
    assert "epoch_000007.pt (epoch 7)" in printed and "counterexample" not in printed
    machine = MooreMachine.from_json(run / "automaton.json")
    assert machine.num_states == 4 and machine.is_equivalent(parity())
    assert machine.minimize() == parity().minimize()
    assert (run / "automaton.dot").read_text().startswith("digraph")
    # --epoch names the files after the epoch; a longer tree gives the same machine
    assert main(["extract", "--run", str(run), "--epoch", "7", "--max-length", "9",
                 "--method", "leader", "--eps", "0.5"]) == 0
    assert "every sequence up to length 9" in capsys.readouterr().out
    assert MooreMachine.from_json(run / "automaton_epoch_000007.json") == machine
    assert (run / "automaton_epoch_000007.dot").is_file()
    (run / "checkpoints" / "epoch_000008.pt").write_bytes(b"not a checkpoint")
    assert main(["extract", "--run", str(run), "--epoch", "8"]) == 2
    err = capsys.readouterr().err
    assert "epoch_000008.pt is not a readable checkpoint" in err and "Traceback" not in err
    save_checkpoint(run / "checkpoints" / "epoch_000009.pt", {"epoch": 9})
    assert main(["extract", "--run", str(run), "--epoch", "9"]) == 2
    assert "is not a parity checkpoint (no model state)" in capsys.readouterr().err


def test_cli_extract_on_a_short_run_and_its_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["parity", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert main(["extract", "--run", str(out), "--epoch", "2"]) == 0
    printed = capsys.readouterr().out
    assert "(epoch 2)" in printed and "equals parity:" in printed
    assert (out / "automaton_epoch_000002.json").is_file()
    assert main(["extract", "--run", str(out)]) == 0
    assert f"states:          {last['num_states']} raw, {last['num_states_minimized']} " \
        "minimized" in capsys.readouterr().out
    for argv, message in [
        (["--run", str(tmp_path / "missing")], "--run: " + str(tmp_path / "missing")
         + " is not a directory"),
        (["--run", str(tmp_path)], "holds no run (no config.json)"),
        (["--run", str(out), "--epoch", "3"],
         "--epoch: " + str(out) + " has no checkpoint for epoch 3 "
         "(checkpoints/epoch_000003.pt); available epochs: 0, 2, 4"),
        (["--run", str(out), "--eps", "1", "--eps-rel", "0.1"],
         "argument --eps-rel: not allowed with argument --eps"),
        (["--run", str(out), "--eps", "-1"], "--eps: expected a number >= 0, got -1.0"),
        (["--run", str(out), "--max-length", "0"], "--max-length: expected a sequence length"),
        (["--run", str(out), "--method", "dbscan"], "argument --method: invalid choice"),
        ([], "the following arguments are required: --run"),
    ]:
        assert main(["extract", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(ValueError, match="--eps: give either --eps"):
        extract_run(out, eps=1.0, eps_rel=0.1)
