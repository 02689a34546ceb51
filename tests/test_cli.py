"""The command line: every setting in --help, `config show`, the aliases, the version, one form of error,
and a --help that does not wait for torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from importlib.metadata import version

import pytest

from hotprune.cli import _main
from hotprune.config import load_config, settings, to_toml


def hotprune(capsys, *argv: str) -> tuple[int, str, str]:
    """`hotprune argv` in this process: (exit code, stdout, stderr). `_main`, not `main`, which would
    leave this process ignoring Ctrl-C."""
    try:
        code = _main(list(argv))
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["run"], ["init"], ["config", "show"]])
def test_help_lists_every_setting_with_its_type_default_and_meaning(capsys, command):
    code, out, _ = hotprune(capsys, *command, "--help")
    assert code == 0
    flat = " ".join(out.split())  # the meanings are wrapped to the terminal
    for section, what, rows in settings():
        assert f"[{section}] {what}:" in out if section else f"{what}:" in out
        for s in rows:
            assert f"\n  {s.key} = {s.default}  ({s.kind})\n" in out
            assert s.meaning in flat and s.allowed in flat
    assert "  pruning.method = \"magnitude\"  ({none,fixed,magnitude,taylor,gradient,set,rigl})\n" in out
    assert "  ppo.hidden_sizes = [64, 64]  (list[int])\n" in out
    assert "discount factor; must be in (0, 1]" in flat  # what a value is checked against


def test_every_setting_says_what_it_means():
    for _, _, rows in settings():
        for s in rows:
            assert s.meaning and "|" not in s.meaning, s.key  # "|" would split docs/settings.md's table row


def test_config_show_prints_what_the_run_would_keep_and_it_loads_back(capsys, tmp_path):
    overrides = ["mode=sync", "total_steps=1e4", "ppo.hidden_sizes=32,16", "pruning.method=taylor"]
    code, out, _ = hotprune(capsys, "config", "show", *(x for o in overrides for x in ("--set", o)))
    assert code == 0
    expected = load_config(None, overrides)
    assert out == to_toml(expected)
    (tmp_path / "shown.toml").write_text(out)
    again = load_config(tmp_path / "shown.toml")
    assert again.epochs == 40 and again.ppo.hidden_sizes == [32, 16]  # 10,000 steps of 256 (the preset)
    again.run_id = expected.run_id  # a fresh one each time
    assert again == expected


def test_config_show_reads_a_config_file_under_the_overrides(capsys, tmp_path):
    (tmp_path / "my.toml").write_text('mode = "sync"\nseed = 4\n[pruning]\ntarget_sparsity = 0.5\n')
    code, out, _ = hotprune(capsys, "config", "show", "--config", str(tmp_path / "my.toml"), "--set", "seed=5")
    shown = tomllib.loads(out)
    assert code == 0 and (shown["mode"], shown["seed"], shown["pruning"]["target_sparsity"]) == ("sync", 5, 0.5)


def test_aliases_are_overrides_of_the_keys_people_type_most_in_command_line_order(capsys):
    code, out, _ = hotprune(capsys, "config", "show", "--env", "Pendulum-v1", "--seed", "7", "--total-steps", "1e5",
                            "--sparsity", "0.5", "--set", "seed=8")
    shown = tomllib.loads(out)
    assert code == 0
    assert (shown["env_id"], shown["seed"], shown["total_steps"]) == ("Pendulum-v1", 8, 100000)
    assert shown["pruning"]["target_sparsity"] == 0.5
    assert tomllib.loads(hotprune(capsys, "config", "show", "--set", "seed=8", "--seed", "7")[1])["seed"] == 7


@pytest.mark.parametrize("argv, error", [
    (["config", "show", "--total-steps", "1.5"], "config show: error: total_steps must be int, got 1.5"),
    (["config", "show", "--set", "ppo.hidden_sizes=a,b"], "config show: error: ppo.hidden_sizes must be a list"),
    (["config", "show", "--sparsity", "1"], "config show: error: pruning.target_sparsity must be in [0, 1), got 1.0"),
    (["config", "show", "--bogus"], "config show: error: unrecognized arguments: --bogus"),
    (["run", "--bogus"], "run: error: unrecognized arguments: --bogus"),
    (["run", "--resume", "runs/x", "--seed", "3"], "run: error: --resume continues a run with its own config"),
    (["init", "--config", "/nonexistent/my.toml"], "init: error: config file /nonexistent/my.toml does not exist"),
    (["show", "/nonexistent/run"], "show: error: /nonexistent/run is not a directory"),
    (["import", "sb3", "/nonexistent/m.zip"], "import: error: the following arguments are required: --env"),
    (["import", "cleanrl", "/nonexistent/m", "--env", "CartPole-v1"], "import: error: /nonexistent/m does not exist"),
])
def test_every_subcommand_fails_with_its_name_a_line_and_exit_2(capsys, argv, error):
    code, _, err = hotprune(capsys, *argv)
    assert code == 2
    assert err.splitlines()[-1].startswith(f"hotprune {error}")


def test_version_comes_from_the_package_metadata(capsys):
    assert hotprune(capsys, "--version") == (0, f"hotprune {version('hotprune')}\n", "")


@pytest.mark.parametrize("argv, absent", [
    (["--help"], ("torch", "zmq", "numpy", "hotprune.config")),
    (["--version"], ("torch", "zmq", "numpy")),
    (["run", "--help"], ("torch", "zmq")),  # the settings come from hotprune.config, which needs numpy
    (["config", "show"], ("torch", "zmq")),
    (["presets"], ("torch", "zmq")),
    (["compressor", "--help"], ("torch",)),  # it prunes numpy arrays: start-up is one torch import less
    (["worker", "--help"], ("torch",)),  # it runs the actor in numpy (workers/numpy_policy.py)
])
def test_the_cli_answers_without_importing_torch(argv, absent):
    """What makes `hotprune --help` take 0.1 s rather than 2 (measured in the README, not here)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "hotprune.cli", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    trace = [line for line in result.stderr.splitlines() if line.startswith("import time")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in trace}
    assert "argparse" in imported  # the trace is there
    assert not imported & set(absent), sorted(imported & set(absent))


def test_config_show_sources_comments_each_line_with_where_its_value_came_from_and_still_loads(capsys, tmp_path):
    (tmp_path / "my.toml").write_text("[ppo]\ngamma = 0.95\n")
    argv = ["config", "show", "--config", str(tmp_path / "my.toml"), "--seed", "3"]
    code, plain, _ = hotprune(capsys, *argv)
    code_sources, out, _ = hotprune(capsys, *argv, "--sources")
    assert code == code_sources == 0
    assert tomllib.loads(out) == tomllib.loads(plain)  # comments only
    lines, section = {}, ""
    for line in out.splitlines():
        if line.startswith("["):
            section = line.strip("[]") + "."
        elif line:
            lines[section + line.split(" = ")[0]] = line
    assert lines["seed"].endswith("  # --set") and lines["ppo.gamma"].endswith(f"  # file {tmp_path / 'my.toml'}")
    assert lines["mode"].endswith("  # default") and "  # preset " in lines["ppo.gae_lambda"]
    assert set(lines) == {s.key for _, _, rows in settings() for s in rows} - {"run_id"}
    assert all("  # " in line for line in lines.values())


def test_a_misspelled_setting_on_the_command_line_names_the_one_it_most_likely_means(capsys):
    code, _, err = hotprune(capsys, "run", "--set", "pruning.target_sparsty=0.9")
    assert code == 2
    assert err == ("hotprune run: error: unknown config key pruning.target_sparsty: did you mean "
                   "pruning.target_sparsity?\n")


def cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """`hotprune argv` as a process of its own (what its start-up and exit do is the point)."""
    return subprocess.run([sys.executable, "-m", "hotprune.cli", *argv], stderr=subprocess.PIPE, text=True,
                          timeout=60, **kwargs)


def test_output_whose_reader_has_gone_ends_quietly_with_141():
    """`hotprune show RUN | head -1`: what is written after head exits meets a closed pipe."""
    read, write = os.pipe()
    os.close(read)  # gone before the first line, so the test does not hang on a pipe's buffer size
    try:
        result = cli("presets", stdout=write)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")


def test_a_run_console_whose_reader_has_gone_goes_on_without_it():
    """`hotprune run | head`: the run is not stopped by its console (the logs keep everything)."""
    read, write = os.pipe()
    os.close(read)
    script = ("import sys; from pathlib import Path; from hotprune.config import load_config; "
              "from hotprune.runs import view\n"
              "with view.View(load_config(None, []), Path('runs/x'), live=False) as shown:\n"
              "    shown.feed([{'event': 'run_finished', 'role': 'supervisor', 'run_id': 'x', 'outcome': 'completed', "
              "'logs': 'runs/x/logs'}])\n"
              "print('went on', file=sys.stderr)")
    try:
        result = subprocess.run([sys.executable, "-c", script], stdout=write, stderr=subprocess.PIPE, text=True,
                                timeout=60)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (0, "went on\n")


def test_a_run_refused_before_its_directory_is_made_prints_no_header_naming_it(tmp_path):
    result = cli("run", "--set", f"runs_dir={json.dumps(str(tmp_path))}", "--set", "run_id=never",
                 "--set", "env_id=NoSuchEnv-v0", stdout=subprocess.PIPE)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.startswith("hotprune run: error: env_id 'NoSuchEnv-v0'") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_while_modules_load_comes_right_after_they_have_loaded():
    """An interrupt raised inside an import can leave a module half made (asyncio without `base_events`, a
    NameError instead of a clean stop): roles.entry.interrupts_held holds it until the imports are done."""
    code = ("import os, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as from a terminal: a shell's `&` ignores it
            "from hotprune.roles.entry import guarded, interrupts_held\n"
            "def body():\n"
            "    with interrupts_held():\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        import json, zmq\n"
            "        print('loaded', flush=True)\n"
            "    print('not reached', flush=True)\n"
            "    return 0\n"
            "sys.exit(guarded(body))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGINT and result.stdout == "loaded\n", result
    assert result.stderr == "hotprune: interrupted\n"
