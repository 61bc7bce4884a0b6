"""Every wandb sweep in configs/sweeps/ must work on its first agent.

No server is contacted: parameter sets are drawn here from each sweep's declared values and
distributions (all of a grid; a few seeded draws for random and bayes, whose first runs are
random draws too), turned into the command line a wandb agent would run (with wandb's own
``${args}`` formatting), and run through the real CLI in-process: ``fit --print_config`` for
each set (the values must land on the CLI's keys, with the CLI's types), instantiation of the
model, data and trainer for each set (slow: each dense conversion traces its network), and
one ``fast_dev_run`` fit per sweep (slow).
"""

import math
import random
import zlib
from importlib import import_module
from itertools import product
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from dense_lightning.cli import create_cli, main

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
TASKS = ("classification", "detection", "keypoints", "regression", "segmentation")
RANDOM_DRAWS = 4
DISCRETE = ("value", "values")
DISTRIBUTIONS = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform_values": ("min", "max"),
}


def load(path):
    return yaml.safe_load(Path(path).read_text())


def distribution_of(spec):
    """The distribution of a parameter spec, as wandb infers it."""
    if "distribution" in spec:
        return spec["distribution"]
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
        return "int_uniform"
    return "uniform"


def quantize(value, q):
    # As wandb's sweeps: round to a multiple of q; an integer q gives integers.
    value = round(value / q) * q
    return int(value) if isinstance(q, int) else value


def draw(spec, rng):
    """One value of a parameter, drawn as wandb's random search draws it."""
    kind = distribution_of(spec)
    low, high = spec.get("min"), spec.get("max")
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        return rng.choice(spec["values"])
    if kind == "int_uniform":
        return rng.randint(low, high)
    if kind in ("uniform", "q_uniform"):
        value = rng.uniform(low, high)
        return quantize(value, spec["q"]) if kind == "q_uniform" else value
    if kind in ("log_uniform_values", "q_log_uniform_values"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        return quantize(value, spec["q"]) if kind.startswith("q_") else value
    if kind == "inv_log_uniform_values":
        return 1 / math.exp(rng.uniform(math.log(1 / high), math.log(1 / low)))
    raise ValueError(f"distribution {kind!r} is not sampled by this test; add it to draw()")


def parameter_sets(config, seed):
    """All grid points; for random and bayes, seeded draws in which every categorical value
    appears at least once (a backbone that cannot be converted must not hide behind luck)."""
    params = config["parameters"]
    if config["method"] == "grid":
        choices = [
            spec["values"] if "values" in spec else [spec["value"]] for spec in params.values()
        ]
        return [dict(zip(params, combo, strict=True)) for combo in product(*choices)]
    rng = random.Random(seed)
    categorical = {n: s["values"] for n, s in params.items() if distribution_of(s) == "categorical"}
    count = max([RANDOM_DRAWS, *map(len, categorical.values())])
    cycles = {name: rng.sample(values, len(values)) for name, values in categorical.items()}
    sets = []
    for i in range(count):
        drawn = {name: draw(spec, rng) for name, spec in params.items()}
        sets.append(drawn | {name: cycle[i % len(cycle)] for name, cycle in cycles.items()})
    return sets


def agent_command(config, params):
    """The command line a wandb agent runs for ``params`` (see wandb/wandb_agent.py)."""
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars |= {
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [config["program"]],
    }
    command = []
    for chunk in create_sweep_command(list(config["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command += sweep_vars.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command


CASES = [
    pytest.param(path, i, params, id=f"{path.stem}-{i}")
    for path in SWEEPS
    for i, params in enumerate(parameter_sets(load(path), zlib.crc32(path.name.encode())))
]


@pytest.fixture
def in_sandbox(tmp_path, monkeypatch):
    """Run in an empty folder that sees the repository's configs, as an agent at the root."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


def cli_args(path, params):
    command = agent_command(load(path), params)
    assert command[:3] == ["/usr/bin/env", "dense-lightning", "fit"], command
    return command[2:]


def lookup(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_one_sweep_per_task():
    assert tuple(path.stem for path in SWEEPS) == TASKS
    for path in SWEEPS:
        config = load(path)
        assert f"configs/{path.stem}/quickstart.yaml" in config["command"]
        assert (REPO / "configs" / path.stem / "quickstart.yaml").is_file()


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_follows_the_wandb_spec_and_watches_the_task_metric(path):
    config = load(path)
    assert config["method"] in ("grid", "random", "bayes")
    assert config["program"] == "dense-lightning"
    assert config["command"][:2] == ["${env}", "${program}"] and "${args}" in config["command"]
    assert config["metric"]["goal"] in ("maximize", "minimize")
    task_config = load(REPO / "configs" / path.stem / "quickstart.yaml")
    module, _, name = task_config["model"]["class_path"].rpartition(".")
    task = getattr(import_module(module), name)
    assert config["metric"]["name"] == task.monitor
    assert config["metric"]["goal"] == {"max": "maximize", "min": "minimize"}[task.mode]
    swept = {key.rsplit(".", 1)[-1] for key in config["parameters"]}
    assert {"lr", "weight_decay", "output_stride", "backbone", "batch_size"} <= swept
    for name, spec in config["parameters"].items():
        kind = distribution_of(spec)
        assert kind in DISTRIBUTIONS, f"{name}: unknown distribution {kind}"
        keys = set(DISTRIBUTIONS[kind]) | ({"distribution"} if "distribution" in spec else set())
        assert set(spec) == keys, f"{name}: {sorted(spec)} but {kind} takes {sorted(keys)}"
        if config["method"] == "grid":
            assert any(k in spec for k in DISCRETE), f"{name}: grid search needs values"
        if kind.startswith("q_") or kind == "int_uniform" or "min" in spec:
            assert spec["min"] < spec["max"], name
        assert name.split(".")[0] in ("model", "data", "trainer"), f"{name}: not a CLI key"


def test_draws_follow_the_declared_distributions():
    rng = random.Random(0)
    batch = [draw({"distribution": "q_log_uniform_values", "min": 8, "max": 32, "q": 8}, rng)]
    batch += [draw({"distribution": "q_log_uniform_values", "min": 8, "max": 32, "q": 8}, rng)]
    assert all(isinstance(b, int) and b in (8, 16, 24, 32) for b in batch)
    lrs = [draw({"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, rng)]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert isinstance(draw({"min": 1, "max": 3}, rng), int)
    assert draw({"value": "x"}, rng) == "x"
    with pytest.raises(ValueError, match="not sampled"):
        draw({"distribution": "beta"}, rng)
    grid = parameter_sets({"method": "grid", "parameters": {"a": {"values": [1, 2]},
                                                            "b": {"value": 0}}}, 0)  # fmt: skip
    assert grid == [{"a": 1, "b": 0}, {"a": 2, "b": 0}]


def test_agent_command_uses_wandbs_flag_format():
    config = {"program": "dense-lightning", "command": ["${env}", "${program}", "fit", "${args}"]}
    command = agent_command(config, {"model.init_args.lr": 1e-05, "data.init_args.batch_size": 16})
    assert command == [
        "/usr/bin/env", "dense-lightning", "fit",
        "--model.init_args.lr=1e-05", "--data.init_args.batch_size=16",
    ]  # fmt: skip


@pytest.mark.parametrize(("path", "index", "params"), CASES)
def test_sampled_set_reaches_the_cli_keys(in_sandbox, capsys, path, index, params):
    with pytest.raises(SystemExit) as exit_info:
        main([*cli_args(path, params), "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    printed = yaml.safe_load(captured.out)
    for key, value in params.items():
        got = lookup(printed, key)
        assert type(got) is type(value) or isinstance(value, float), (key, got, value)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key


@pytest.mark.slow  # tracing each network for the dense conversion takes a second or more
@pytest.mark.parametrize(("path", "index", "params"), CASES)
def test_sampled_set_builds_model_data_and_trainer(in_sandbox, path, index, params):
    # What fit instantiates first: bad values (NotEquivalentError, an unreachable stride,
    # an unknown backbone, lr <= 0...) fail here.
    cli = create_cli(cli_args(path, params)[1:], run=False)
    model_params = {k.rsplit(".", 1)[-1]: v for k, v in params.items() if k.startswith("model.")}
    for name, value in model_params.items():
        assert cli.model.hparams[name] == pytest.approx(value), name
    info = cli.model.model.dense_info
    assert info.output_stride == params.get("model.init_args.output_stride", info.output_stride)
    batch_size = params.get("data.init_args.batch_size")
    assert batch_size is None or cli.datamodule.batch_size == batch_size


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_first_sampled_set_fits(in_sandbox, path):
    params = next(case.values[2] for case in CASES if case.values[0] == path)
    cli = create_cli([*cli_args(path, params), "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    assert (in_sandbox / "exports" / "model_original.ckpt").is_file()
