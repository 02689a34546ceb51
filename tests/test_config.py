import dataclasses
import math
import re
import tomllib
import typing

import pytest

from hotprune.runs import rundir
from hotprune.config import (Config, ConfigError, load_config, load_config_with_sources, presets, settings, to_toml,
                             validate)
from hotprune.envs import env_spec


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults():
    c = load_config()
    assert c.env_id == "CartPole-v1"
    assert c.mode == "async"
    assert c.prune_training_model is True
    assert c.num_workers == 2
    assert c.pruning.method == "magnitude"
    assert c.pruning.target_sparsity == 0.8
    assert c.run_id and all(ch.isalnum() or ch in "-_." for ch in c.run_id)
    assert c.run_dir.name == c.run_id


def test_a_generated_run_id_says_what_the_run_is():
    c = load_config(overrides=["mode=sync", "prune_training_model=false", "pruning.method=taylor",
                               "pruning.structure=neuron", "pruning.target_sparsity=0.9", "seed=3"])
    assert c.run_id.startswith("cartpole-sync-ts-tayn90-s3-")
    assert load_config(overrides=["pruning.method=none"]).run_id.startswith("cartpole-async-bp-dense-s1-")
    deep = load_config(overrides=["runs_dir=/tmp/" + "d" * 60])  # the short form where ipc paths would not fit
    assert deep.run_id[:8].isdigit() and deep.endpoints()
    odd = load_config(overrides=["env_id=ALE/Weird:Env_Name-v5"])  # only the id's allowed characters
    assert odd.run_id.startswith("ale-weird-env-na-async-") and len(odd.run_id) < 64


def test_generated_run_ids_differ_and_an_explicit_one_is_kept():
    assert load_config().run_id != load_config().run_id
    assert load_config(overrides=["run_id=my-run_1"]).run_id == "my-run_1"


def test_toml_file_overrides_defaults(tmp_path):
    path = write(tmp_path, """
env_id = "Pendulum-v1"
mode = "sync"
num_workers = 3
[ppo]
learning_rate = 1e-3
hidden_sizes = [32, 16]
[pruning]
target_sparsity = 0.5
schedule = "cubic"
""")
    c = load_config(path)
    assert (c.env_id, c.mode, c.num_workers) == ("Pendulum-v1", "sync", 3)
    assert c.ppo.learning_rate == 1e-3 and c.ppo.hidden_sizes == [32, 16]
    assert c.pruning.target_sparsity == 0.5 and c.pruning.schedule == "cubic"
    # untouched keys come from the env's preset, then the defaults
    assert c.preset == "Pendulum-v1" and c.ppo.gamma == 0.9
    assert c.pruning.method == "magnitude" and c.seed == 1


def test_set_overrides_win_over_file(tmp_path):
    path = write(tmp_path, 'num_workers = 3\nmode = "sync"\n[pruning]\ntarget_sparsity = 0.5\n')
    c = load_config(path, ["num_workers=4", "pruning.target_sparsity=0.6"])
    assert c.num_workers == 4 and c.pruning.target_sparsity == 0.6
    assert c.mode == "sync"  # from the file, not overridden


def test_set_parses_toml_literals_and_falls_back_to_bare_strings():
    c = load_config(overrides=[
        "seed=7",
        "ppo.learning_rate=0.001",
        "ppo.anneal_lr=false",
        "prune_training_model=false",
        "ppo.hidden_sizes=[16, 8]",
        "mode=sync",
        "env_id=Pendulum-v1",
        'runs_dir="quoted dir"',
        "supervisor.stop_grace_s=3",  # an int literal where a float is expected
    ])
    assert c.seed == 7 and isinstance(c.seed, int)
    assert c.ppo.learning_rate == 0.001
    assert c.ppo.anneal_lr is False and c.prune_training_model is False
    assert c.ppo.hidden_sizes == [16, 8]
    assert c.mode == "sync" and c.env_id == "Pendulum-v1"
    assert c.runs_dir == "quoted dir"
    assert c.supervisor.stop_grace_s == 3.0 and isinstance(c.supervisor.stop_grace_s, float)


@pytest.mark.parametrize("overrides, key", [
    (["colour=red"], "colour"),
    (["ppo.momentum=0.9"], "ppo.momentum"),
    (["nosuch.thing=1"], "nosuch"),
])
def test_unknown_keys_are_rejected(overrides, key):
    with pytest.raises(ConfigError, match="unknown config key " + key.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_unknown_key_in_file_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"pruning\.sparsity"):
        load_config(write(tmp_path, "[pruning]\nsparsity = 0.5\n"))


@pytest.mark.parametrize("override, key", [
    ('num_workers="two"', "num_workers"),  # string for int
    ("prune_training_model=1", "prune_training_model"),  # int for bool
    ("num_workers=true", "num_workers"),  # bool for int
    ("ppo.learning_rate=true", "ppo.learning_rate"),  # bool for float
    ("pruning.target_sparsity=high", "pruning.target_sparsity"),  # bare string for float
    ("ppo.hidden_sizes=[64, 1.5]", "ppo.hidden_sizes"),
    ("ppo.hidden_sizes=64", "ppo.hidden_sizes"),  # one layer of 64, or 64,64? Say it as a list.
    ("ppo.hidden_sizes=a,b", "ppo.hidden_sizes"),
    ("ppo.hidden_sizes=64,1.5", "ppo.hidden_sizes"),
    ("ppo.hidden_sizes=64,", "ppo.hidden_sizes"),
    ("total_steps=1.5", "total_steps"),  # an int key takes only integral floats
    ("seed=inf", "seed"),
    ("ppo.learning_rate=nan", "ppo.learning_rate"),
    ("ppo=3", "ppo"),  # a value where a section belongs
    ("env_id.x=1", "env_id"),  # a section where a value belongs
])
def test_wrong_types_are_rejected(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert str(info.value).startswith(key + " ") or str(info.value).startswith(key + ":")


def test_an_int_key_takes_an_integral_float_as_rl_zoo_writes_step_counts(tmp_path):
    c = load_config(overrides=["total_steps=1e5", "seed=2.0"])
    assert c.total_steps == 100000 and isinstance(c.total_steps, int) and c.seed == 2 and isinstance(c.seed, int)
    assert load_config(write(tmp_path, "total_steps = 2.5e4\n")).total_steps == 25000


def test_a_list_of_ints_may_be_written_with_commas(tmp_path):
    assert load_config(overrides=["ppo.hidden_sizes=256,256"]).ppo.hidden_sizes == [256, 256]
    assert load_config(overrides=["ppo.hidden_sizes= 32, 16 ,8"]).ppo.hidden_sizes == [32, 16, 8]
    assert load_config(overrides=["ppo.hidden_sizes=[1e2, 50]"]).ppo.hidden_sizes == [100, 50]
    assert load_config(write(tmp_path, '[ppo]\nhidden_sizes = "128,64"\n')).ppo.hidden_sizes == [128, 64]


def test_wrong_type_in_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^ppo\.update_epochs must be int"):
        load_config(write(tmp_path, '[ppo]\nupdate_epochs = "4"\n'))


@pytest.mark.parametrize("override, key", [
    ("pruning.target_sparsity=1.5", "pruning.target_sparsity"),
    ("pruning.target_sparsity=-0.1", "pruning.target_sparsity"),
    ("num_workers=0", "num_workers"),
    ("mode=fast", "mode"),
    ("pruning.method=foo", "pruning.method"),
    ("pruning.scope=row", "pruning.scope"),
    ("transport.kind=udp", "transport.kind"),
    ("samples_per_epoch=127", "samples_per_epoch"),  # one chunk is 32 steps x 4 envs = 128 (CartPole's preset)
    ("ppo.minibatches=1025", "ppo.minibatches"),  # 2048 samples: a minibatch of one has no std
    ("run_id=..", "run_id"),  # would make the run directory runs_dir itself
    ("run_id=.hidden", "run_id"),
    ("run_id=latest", "run_id"),
    ("run_id=" + "x" * 247, "run_id"),  # hotprune-<run_id> would not fit a file name
    ("ppo.gamma=0", "ppo.gamma"),
    ("ppo.hidden_sizes=[]", "ppo.hidden_sizes"),
    ("pruning.initial_sparsity=0.9", "pruning.initial_sparsity"),
    ("pruning.end_epoch=2", "pruning.end_epoch"),
    ("transport.base_port=80", "transport.base_port"),
    ("run_id=a/b", "run_id"),
    ("env_id=", "env_id"),
    ("pruning.structure=filter", "pruning.structure"),
    ("pruning.distribution=erk", "pruning.distribution"),  # erk needs layer scope
    ("pruning.num_gradient_batches=0", "pruning.num_gradient_batches"),
    ("pruning.gradient_batch_size=64", "pruning.gradient_batch_size"),  # PPO's minibatch is 256
    ("pruning.delay_s=-1", "pruning.delay_s"),
])
def test_out_of_range_values_are_rejected(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert message.startswith(key + " "), message
    assert "got" in message


def test_pruning_choices_come_from_the_criteria_registry():
    from hotprune.pruning.criteria import CRITERIA

    for name in CRITERIA:
        assert load_config(overrides=[f"pruning.method={name}"]).pruning.method == name
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["pruning.method=random"])
    assert all(name in str(info.value) for name in ("none", *CRITERIA))


@pytest.mark.parametrize("overrides, key", [
    (["pruning.scope=layer", "pruning.distribution=erk", "pruning.structure=neuron"], "pruning.distribution"),
    (["pruning.structure=neuron", "pruning.prune_output_layer=true"], "pruning.prune_output_layer"),
])
def test_combinations_that_cannot_work_are_refused_at_start(overrides, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + " "):
        load_config(overrides=overrides)


def test_gradient_batch_size_may_name_the_ppo_minibatch_size():
    c = load_config(overrides=["pruning.gradient_batch_size=256", "pruning.method=taylor"])
    assert c.algo.minibatch_size(c.epoch_samples) == 256 and c.pruning.gradient_batch_size == 256
    assert load_config(overrides=["pruning.scope=layer", "pruning.distribution=erk"]).pruning.distribution == "erk"


def test_samples_per_epoch_of_exactly_one_chunk_is_accepted():
    c = load_config(overrides=["preset=none", "samples_per_epoch=256"])
    assert c.samples_per_epoch == c.chunk_samples == 256
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        load_config(overrides=["preset=none", "samples_per_epoch=256", "envs_per_worker=5"])


def test_error_message_names_value_and_allowed_choices():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["mode=fast"])
    assert "'fast'" in str(info.value) and "async" in str(info.value) and "sync" in str(info.value)


@pytest.mark.parametrize("item", ["num_workers", "=3", ""])
def test_malformed_set_is_rejected(item):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=[item])


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml") as info:
        load_config(missing)
    assert "does not exist" in str(info.value)


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "mode = = sync\n", name="bad.toml")
    with pytest.raises(ConfigError, match="bad.toml") as info:
        load_config(path)
    assert "not valid TOML" in str(info.value)


def test_to_toml_round_trips(tmp_path):
    c = load_config(overrides=[
        "env_id=Pendulum-v1", "mode=sync", "prune_training_model=false", "seed=42", "total_steps=100000",
        "ppo.learning_rate=3e-05", "ppo.hidden_sizes=[128, 64, 32]", "pruning.schedule=cubic",
        "pruning.initial_sparsity=0.125", "pruning.end_epoch=40", "transport.kind=tcp",
        'runs_dir="some dir/with \\"quotes\\" and \\\\ backslash"', "supervisor.stop_grace_s=2.5",
    ])
    path = write(tmp_path, to_toml(c), name="config.toml")
    again = load_config(path)
    assert isinstance(again, Config)
    assert same_but_run_id(again, c)
    assert again.runs_dir == 'some dir/with "quotes" and \\ backslash'


def same_but_run_id(a: Config, b: Config) -> bool:
    """A run's config.toml leaves out run_id (the directory's name is the id)."""
    return dataclasses.replace(a, run_id=b.run_id) == b


def test_to_toml_round_trips_defaults(tmp_path):
    c = load_config()
    assert same_but_run_id(load_config(write(tmp_path, to_toml(c))), c)


def test_to_toml_round_trips_non_ascii_strings(tmp_path):
    """runs_dir is written to the run's config.toml and read back by every child process."""
    c = load_config(overrides=['runs_dir="runs/ünïcode/\U0001F600"'])
    assert same_but_run_id(load_config(write(tmp_path, to_toml(c))), c)


def test_the_config_of_a_saved_run_starts_a_new_run(tmp_path):
    first = load_config(overrides=[f"runs_dir={tmp_path}", "run_id=first", "epochs=9"])
    saved = rundir.prepare(first) / "config.toml"
    assert "run_id" not in saved.read_text()
    again = load_config(saved)
    assert again.run_id != "first" and same_but_run_id(again, first)
    assert rundir.prepare(again) == tmp_path / again.run_id  # not refused as taken
    # An id the user names is still theirs: a taken one is refused.
    with pytest.raises(ConfigError, match="already holds a run"):
        rundir.prepare(load_config(saved, ["run_id=first"]))


def test_a_run_s_config_records_the_epochs_total_steps_gave():
    c = load_config(overrides=["preset=none", "total_steps=10000", "epochs=150"])
    assert c.epochs == c.total_epochs == 5
    assert "\nepochs = 5\n" in to_toml(c) and "\ntotal_steps = 10000\n" in to_toml(c)


def test_total_steps_sets_total_epochs():
    default = load_config(overrides=["preset=none"])
    assert default.total_steps == 0 and default.total_epochs == default.epochs
    assert load_config(overrides=["epochs=7"]).total_epochs == 7  # a length given: not the preset's
    c = load_config(overrides=["total_steps=10000", "samples_per_epoch=2048"])
    assert c.total_epochs == math.ceil(10000 / 2048) == 5
    assert load_config(overrides=["preset=none", "total_steps=4096"]).total_epochs == 2  # exact multiple
    assert load_config(overrides=["total_steps=1", "epochs=50"]).total_epochs == 1


def test_env_spec_discrete_and_continuous():
    cart = env_spec("CartPole-v1")
    assert (cart.obs_dim, cart.act_dim, cart.discrete) == (4, 2, True)
    pend = env_spec("Pendulum-v1")
    assert (pend.obs_dim, pend.act_dim, pend.discrete) == (3, 1, False)
    assert pend.action_low == (-2.0,) and pend.action_high == (2.0,)


def test_env_spec_unknown_id():
    with pytest.raises(ConfigError, match="NoSuchEnv-v0"):
        env_spec("NoSuchEnv-v0")


# --- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_shipped_preset_is_a_valid_config_of_its_env(name):
    """preset = auto picks it from env_id and algorithm (<env_id> for PPO, <env_id>-<algorithm> else; a / in
    the id is a - in the name)."""
    shipped = tomllib.loads(presets()[name].read_text())
    algorithm = shipped.get("algorithm", "ppo")
    c = load_config(overrides=[f"env_id={shipped['env_id']}", f"algorithm={algorithm}"])
    assert c.preset == name and c.env_id == shipped["env_id"] and c.algorithm == algorithm
    assert name == (c.env_id if algorithm == "ppo" else f"{c.env_id}-{algorithm}").replace("/", "-")
    assert c.total_steps == shipped["total_steps"] and c.samples_per_epoch == shipped["samples_per_epoch"]
    assert dataclasses.asdict(getattr(c, algorithm)).items() >= shipped[algorithm].items()
    assert presets()[name].read_text().startswith(f"# {name}: ")  # `hotprune presets` shows that line


def test_the_default_run_uses_cartpole_s_preset_under_the_user_s_settings(tmp_path):
    c = load_config()
    assert (c.preset, c.samples_per_epoch, c.ppo.update_epochs, c.ppo.gamma) == ("CartPole-v1", 256, 20, 0.98)
    path = tmp_path / "my.toml"
    path.write_text("[ppo]\ngamma = 0.95\n")
    c = load_config(path, ["ppo.update_epochs=4"])
    assert (c.ppo.gamma, c.ppo.update_epochs, c.ppo.gae_lambda) == (0.95, 4, 0.8)  # file, --set, preset
    plain = load_config(overrides=["preset=none"])
    assert (plain.preset, plain.samples_per_epoch, plain.ppo.gamma) == ("none", 2048, 0.99)
    assert load_config(overrides=["env_id=MountainCar-v0"]).preset == "none"  # no preset shipped: the defaults


def test_a_length_given_replaces_the_preset_s():
    assert load_config(overrides=["epochs=10"]).total_epochs == 10
    assert load_config(overrides=["total_steps=2560"]).total_epochs == 10
    assert load_config().total_epochs == math.ceil(100_000 / 256)


@pytest.mark.parametrize("overrides, message", [
    (["preset=Pendulum-v2"], "unknown preset 'Pendulum-v2'"),
    (["preset=Pendulum-v1", "env_id=CartPole-v1"], "preset Pendulum-v1 is for Pendulum-v1, not env_id CartPole-v1"),
    (["preset=3"], "preset must be a string"),
    (["env_id.x=1"], "env_id"),
])
def test_bad_presets_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=overrides)


def test_a_saved_run_s_config_keeps_its_preset_s_values(tmp_path):
    c = load_config(overrides=["env_id=Pendulum-v1", "ppo.gamma=0.95"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(c))
    again = load_config(path)
    assert dataclasses.replace(again, run_id=c.run_id) == c


def test_a_length_given_on_the_command_line_replaces_the_saved_config_s(tmp_path):
    saved = tmp_path / "config.toml"
    saved.write_text(to_toml(load_config()))  # holds total_steps = 100000 and epochs = 391
    assert load_config(saved, ["epochs=5"]).total_epochs == 5
    assert load_config(saved, ["total_steps=2560"]).total_epochs == 10
    assert load_config(saved).total_epochs == 391


def test_a_run_s_own_config_does_not_depend_on_the_presets_shipped(tmp_path):
    saved = tmp_path / "config.toml"
    saved.write_text(to_toml(load_config()).replace('preset = "CartPole-v1"', 'preset = "Retired-v0"'))
    with pytest.raises(ConfigError, match="unknown preset 'Retired-v0'"):
        load_config(saved)
    assert load_config(saved, with_preset=False).samples_per_epoch == 256


def test_total_steps_counts_the_samples_an_epoch_really_trains_on():
    # sync: every worker sends the same number of chunks, so an epoch may train on more than asked
    c = load_config(overrides=["mode=sync", "chunk_steps=64", "total_steps=100000"])
    assert c.epoch_samples == 512 and c.total_epochs == math.ceil(100_000 / 512)


SAC = ["algorithm=sac", "env_id=Pendulum-v1"]


@pytest.mark.parametrize("overrides, key", [
    (["algorithm=dqn"], "algorithm"),
    ([*SAC, "sac.tau=0"], "sac.tau"),
    ([*SAC, "sac.tau=1.5"], "sac.tau"),
    ([*SAC, "sac.gamma=0"], "sac.gamma"),
    ([*SAC, "sac.q_lr=0"], "sac.q_lr"),
    ([*SAC, "sac.policy_lr=-1e-3"], "sac.policy_lr"),
    ([*SAC, "sac.batch_size=0"], "sac.batch_size"),
    ([*SAC, "sac.buffer_size=100"], "sac.buffer_size"),  # smaller than a batch
    ([*SAC, "sac.learning_starts=-1"], "sac.learning_starts"),
    ([*SAC, "sac.utd=0"], "sac.utd"),
    ([*SAC, "sac.policy_frequency=0"], "sac.policy_frequency"),
    ([*SAC, "sac.target_network_frequency=0"], "sac.target_network_frequency"),
    ([*SAC, "sac.alpha=-0.1"], "sac.alpha"),
    ([*SAC, "sac.hidden_sizes=[]"], "sac.hidden_sizes"),
    ([*SAC, "pruning.targets=critic"], "pruning.targets"),  # the actor is always pruned
    ([*SAC, "pruning.targets=actor,value"], "pruning.targets"),
    (["pruning.targets=actor,critic"], "pruning.targets"),  # PPO's critic is not pruned
    ([*SAC, "pruning.targets=actor,critic", "prune_training_model=false"], "pruning.targets"),  # not both pruned
    ([*SAC, "pruning.gradient_batch_size=64"], "pruning.gradient_batch_size"),  # SAC's batch is 256
])
def test_bad_sac_settings_are_refused_with_the_key_the_value_and_what_is_allowed(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    message = str(info.value)
    assert message.startswith(key + " ") and "got" in message, message


def test_algorithm_choices_come_from_the_algorithm_registry():
    from hotprune.algorithms import ALGORITHMS

    with pytest.raises(ConfigError) as info:
        load_config(overrides=["algorithm=dqn"])
    assert all(name in str(info.value) for name in ALGORITHMS)


def test_sac_takes_its_env_s_sac_preset_and_its_own_hidden_sizes_and_batch():
    c = load_config(overrides=[*SAC, "pruning.targets=actor,critic", "pruning.gradient_batch_size=256"])
    assert (c.preset, c.algorithm, c.samples_per_epoch, c.sac.learning_starts) == ("Pendulum-v1-sac", "sac", 512, 1000)
    assert c.algo.hidden_sizes == c.sac.hidden_sizes == [64, 64] and c.algo.minibatch_size(c.epoch_samples) == 256
    assert c.pruning.targets == ["actor", "critic"] and c.algo.gamma == c.sac.gamma
    assert c.random_versions == 2  # learning starts at 1,000 steps: the trainer's updates 1 and 2 come first
    assert c.run_id.startswith("pendulum-sac-async-bp-")
    assert load_config(overrides=["env_id=Pendulum-v1"]).preset == "Pendulum-v1"  # PPO keeps its own
    assert load_config(overrides=[*SAC, "preset=none"]).sac.hidden_sizes == [256, 256]  # CleanRL's
    with pytest.raises(ConfigError, match="preset Pendulum-v1-sac is for algorithm sac, not algorithm ppo"):
        load_config(overrides=["preset=Pendulum-v1-sac", "algorithm=ppo"])


def test_a_sac_run_on_discrete_actions_or_with_a_buffer_beyond_memory_is_refused_before_it_starts(tmp_path):
    runs = f"runs_dir={tmp_path}"
    with pytest.raises(ConfigError, match="algorithm sac needs Box actions; env_id CartPole-v1 has Discrete"):
        rundir.prepare(load_config(overrides=["algorithm=sac", "env_id=CartPole-v1", runs]))
    huge = load_config(overrides=[*SAC, runs, "sac.buffer_size=1e12", "total_steps=1e12"])
    with pytest.raises(ConfigError, match=r"^sac.buffer_size 1,000,000,000,000 needs .* GiB .* at most [\d,]+ here"):
        rundir.prepare(huge)
    assert not list(tmp_path.iterdir())  # nothing made


# --- declared once: rules, "did you mean", sources ----------------------------------------------------


def declared(section=Config, prefix=""):
    """(dotted key, type, Allowed) of every setting, from the fields' own declarations."""
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from declared(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name], f.metadata["allowed"]


def just_outside(kind, allowed):
    """Values just past each declared bound."""
    step = 1 if kind is int else 0.5
    if allowed.low is not None:
        yield allowed.low if allowed.low_open else allowed.low - step
    if allowed.high is not None:
        yield allowed.high if allowed.high_open else allowed.high + step


BOUNDED = [(key, value) for key, kind, allowed in declared() for value in just_outside(kind, allowed)]


@pytest.mark.parametrize("key, value", BOUNDED)
def test_a_value_past_a_declared_bound_is_refused_in_the_words_the_help_shows(key, value):
    rules = {s.key: s.allowed for _, _, rows in settings() for s in rows}
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"{key}={value}"])
    assert str(info.value).startswith(f"{key} {rules[key].split('; ')[0]}, got "), str(info.value)


def test_most_keys_declare_bounds_and_every_declared_choice_list_is_a_registry_s():
    from hotprune.algorithms import ALGORITHMS
    from hotprune.protocol.endpoints import TRANSPORTS
    from hotprune.pruning.criteria import METHODS
    from hotprune.pruning.schedule import SCHEDULES

    assert len(BOUNDED) >= 50
    choices = {key: allowed.choices for key, _, allowed in declared() if allowed.choices}
    assert choices["algorithm"] == tuple(ALGORITHMS) and choices["pruning.method"] is METHODS
    assert choices["pruning.schedule"] is SCHEDULES and choices["transport.kind"] is TRANSPORTS


def test_a_config_made_in_python_is_checked_by_the_same_declarations():
    c = load_config()
    validate(c)
    c.pruning.target_sparsity = 1.0
    with pytest.raises(ConfigError, match=re.escape("pruning.target_sparsity must be in [0, 1), got 1.0")):
        validate(c)
    c = load_config()
    c.num_workers = "2"  # a type is a rule too
    with pytest.raises(ConfigError, match="^num_workers must be int, got '2'"):
        validate(c)
    c = load_config()
    c.ppo = 3
    with pytest.raises(ConfigError, match="^ppo must be a section"):
        validate(c)


@pytest.mark.parametrize("override", ["chunk_steps=0", "envs_per_worker=0", "ppo.minibatches=0"])
def test_a_size_of_zero_is_one_line_not_a_division_by_zero(override):
    """The run's length is worked out from these before the rules between keys are checked."""
    with pytest.raises(ConfigError, match=f"^{override.split('=')[0]} must be >= 1, got 0"):
        load_config(overrides=[override])


@pytest.mark.parametrize("override, expected", [
    ("pruning.target_sparsty=0.9", "unknown config key pruning.target_sparsty: did you mean pruning.target_sparsity?"),
    ("target_sparsity=0.9", "unknown config key target_sparsity: did you mean pruning.target_sparsity?"),
    ("prunning.method=taylor", "unknown config key prunning.method: did you mean pruning.method?"),
    ("gamma=0.9", "unknown config key gamma: did you mean ppo.gamma or sac.gamma?"),
    ("ppo.batch_size=64", "unknown config key ppo.batch_size: did you mean sac.batch_size?"),
    ("num_worker=3", "unknown config key num_worker: did you mean num_workers?"),
])
def test_a_misspelled_key_names_the_setting_it_most_likely_means(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert str(info.value) == expected


def test_a_misspelled_key_in_a_config_file_names_the_setting_it_most_likely_means(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("unknown config key ppo.learning_rte: did you mean "
                                                    "ppo.learning_rate?")):
        load_config(write(tmp_path, "[ppo]\nlearning_rte = 3e-4\n"))


def test_a_key_like_no_setting_gets_the_keys_known_where_it_stands():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["ppo.momentum=0.9"])
    assert str(info.value).startswith("unknown config key ppo.momentum (known: anneal_lr, clip_coef, ")


def test_each_value_s_source_is_the_layer_that_gave_it(tmp_path):
    path = write(tmp_path, "seed = 4\n[ppo]\ngamma = 0.95\nupdate_epochs = 7\n")
    c, sources = load_config_with_sources(path, ["ppo.update_epochs=4", "total_steps=1e4", "pruning.every=5"])
    assert same_but_run_id(c, load_config(path, ["ppo.update_epochs=4", "total_steps=1e4", "pruning.every=5"]))
    preset = f"preset {presets()['CartPole-v1']}"
    assert (c.seed, sources["seed"]) == (4, f"file {path}")
    assert (c.ppo.gamma, sources["ppo.gamma"]) == (0.95, f"file {path}")
    assert (c.ppo.update_epochs, sources["ppo.update_epochs"]) == (4, "--set")  # over the file's 7
    assert (c.pruning.every, sources["pruning.every"]) == (5, "--set")
    assert (c.ppo.gae_lambda, sources["ppo.gae_lambda"]) == (0.8, preset)
    assert (c.ppo.clip_coef, sources["ppo.clip_coef"]) == (0.2, "default")
    assert (c.preset, sources["preset"]) == ("CartPole-v1", "default (auto)")
    assert (c.epochs, sources["epochs"], sources["total_steps"]) == (40, "from total_steps", "--set")
    assert sources["run_id"] == "generated"
    assert set(sources) == {s.key for _, _, rows in settings() for s in rows}


def test_sources_of_a_named_preset_a_mask_file_and_a_saved_run_s_config(tmp_path):
    _, sources = load_config_with_sources(overrides=["preset=none", "pruning.mask_file=m.safetensors",
                                                     "run_id=mine"])
    assert sources["preset"] == "--set" and sources["ppo.gamma"] == "default"
    assert sources["pruning.method"] == "from pruning.mask_file" and sources["run_id"] == "--set"
    saved = write(tmp_path, to_toml(load_config(overrides=["env_id=Pendulum-v1"])), name="config.toml")
    _, sources = load_config_with_sources(saved, with_preset=False)
    assert {sources[k] for k in sources if k not in ("epochs", "run_id")} == {f"file {saved}"}


# --- networks: [actor] and [critic] over the algorithm's hidden_sizes and activation ------------------


def test_actor_and_critic_take_their_own_widths_and_activation_over_the_algorithms(tmp_path):
    import torch

    from hotprune.learning.learners import make_learner

    c = load_config(overrides=["preset=none"])
    assert c.network("actor") == c.network("critic") == ([64, 64], "tanh", None)  # PPO's shorthand and its own tanh
    path = write(tmp_path, '[ppo]\nhidden_sizes = [32]\n[actor]\nhidden_sizes = [8, 4]\nactivation = "elu"\n'
                           '[critic]\nactivation = "gelu"\n')
    c = load_config(path, ["preset=none"])
    assert c.network("actor") == ([8, 4], "elu", None) and c.network("critic") == ([32], "gelu", None)
    learner = make_learner(c, env_spec("CartPole-v1"), torch.Generator())
    assert [m.out_features for m in learner.actor.net if isinstance(m, torch.nn.Linear)] == [8, 4, 2]
    assert isinstance(learner.actor.net[1], torch.nn.ELU)
    assert [type(m).__name__ for m in learner.critic] == ["Linear", "GELU", "Linear"]
    saved = write(tmp_path, to_toml(c), "saved.toml")  # a run's config.toml keeps them
    assert load_config(saved, with_preset=False).network("critic") == ([32], "gelu", None)
    s = load_config(overrides=["algorithm=sac", "env_id=Pendulum-v1", "preset=none", "critic.hidden_sizes=16,16"])
    assert s.network("actor") == ([256, 256], "relu", None) and s.network("critic") == ([16, 16], "relu", None)
    learner = make_learner(s, env_spec("Pendulum-v1"), torch.Generator())
    assert learner.qf1_target.net[0].out_features == 16 and learner.actor.net[0].out_features == 256


@pytest.mark.parametrize("override, message", [
    ("actor.activation=swish", "actor.activation must be one of auto|tanh|relu|elu|silu|gelu|leaky_relu, got 'swish'"),
    ("critic.hidden_sizes=[64, 0]", "critic.hidden_sizes must be empty or positive sizes, got [64, 0]"),
    ("actor.hidden_sizes=wide", "actor.hidden_sizes must be a list of integers (e.g. 64,64 or [64, 64]), got 'wide'"),
])
def test_a_bad_network_setting_is_one_line_and_exit_2(capsys, tmp_path, override, message):
    from tests.servicekit import run_cli

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_config(overrides=[override])
    code, _, err = run_cli(capsys, "run", "--set", override, "--set", f"runs_dir={tmp_path}")
    assert (code, err.strip()) == (2, f"hotprune run: error: {message}")
    assert not list(tmp_path.iterdir())


# --- the environment's constructor, wrappers and module directory -----------------------------------


def test_env_kwargs_are_a_table_from_a_file_from_set_and_from_python(tmp_path):
    path = write(tmp_path, 'env_id = "CartPole-v1"\n[env_kwargs]\nsize = 8\nname = "long"\n')
    c, sources = load_config_with_sources(path, ["env_kwargs.size=9", 'env_kwargs.layout=[1, 2]'])
    assert c.env_kwargs == {"size": 9, "name": "long", "layout": [1, 2]}
    assert sources["env_kwargs"] == "--set"
    assert load_config_with_sources(path)[1]["env_kwargs"] == f"file {path}"
    assert Config.from_dict({"env_kwargs": {"size": 8, "options": {"hard": True}}}).env_kwargs == \
        {"size": 8, "options": {"hard": True}}
    assert load_config().env_kwargs == {} and load_config().env_wrappers == []
    saved = write(tmp_path, to_toml(c), name="config.toml")  # a run's config.toml keeps them as they were
    assert load_config(saved, with_preset=False).env_kwargs == c.env_kwargs


@pytest.mark.parametrize("override, message", [
    ("env_kwargs=3", "env_kwargs must be a table (e.g. {size = 8}, or --set env_kwargs.size=8), got 3"),
    ("env_wrappers=nowrap", "env_wrappers must be module:callable names, got ['nowrap']"),
    ('env_wrappers=["a:b", "c d:e"]', "env_wrappers must be module:callable names, got ['a:b', 'c d:e']"),
])
def test_bad_environment_settings_are_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert str(error.value) == message


def test_env_dir_is_the_start_directory_made_absolute_when_a_module_is_imported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c, sources = load_config_with_sources(overrides=["env_id=mymod:Corridor-v0"])
    assert c.env_dir == str(tmp_path.resolve()) and sources["env_dir"] == "the start directory"
    (tmp_path / "envs").mkdir()
    assert load_config(overrides=["env_id=CartPole-v1", "env_wrappers=mymod:Wrap", "env_dir=envs"]).env_dir == \
        str(tmp_path.resolve() / "envs")
    assert load_config(overrides=["env_id=CartPole-v1"]).env_dir == ""  # no module of the user's: nothing recorded
    saved = write(tmp_path, to_toml(c), name="config.toml")
    monkeypatch.chdir(tmp_path / "envs")  # a restarted process, or --resume, from anywhere: the same directory
    assert load_config(saved, with_preset=False).env_dir == str(tmp_path.resolve())


def test_a_run_s_config_toml_written_with_ppo_input_bound_still_loads_under_its_new_name(tmp_path):
    """input_bound was ppo.input_bound; a run directory's config.toml holds every key as it was named."""
    today = to_toml(load_config())
    old = today.replace("input_bound = 1000000.0\n", "").replace("[ppo]\n", "[ppo]\ninput_bound = 5.0\n")
    assert "[ppo]\ninput_bound = 5.0\n" in old and "\ninput_bound" not in old.split("[ppo]")[0]
    c = load_config(write(tmp_path, old, name="config.toml"), with_preset=False)
    assert c.input_bound == 5.0 and not hasattr(c.ppo, "input_bound")
    assert load_config(overrides=["ppo.input_bound=7"]).input_bound == 7.0
    assert load_config(write(tmp_path, old, name="config.toml"), ["input_bound=9"], with_preset=False).input_bound == 9
    assert "input_bound = 5.0" in to_toml(c).split("[ppo]")[0]  # written under the new name
    with pytest.raises(ConfigError, match="input_bound must be > 0"):
        load_config(overrides=["ppo.input_bound=0"])


def test_the_algorithm_s_section_is_named_not_guessed():
    """cfg.algo is the run's algorithm's own section; nothing at the top level picks PPO or SAC silently."""
    ppo, sac = load_config(overrides=["preset=none"]), load_config(overrides=[*SAC, "preset=none"])
    assert ppo.algo is ppo.ppo and sac.algo is sac.sac
    assert not any(hasattr(Config, name) for name in ("hidden_sizes", "gamma", "minibatch_size"))
