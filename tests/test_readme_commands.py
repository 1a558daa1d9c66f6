"""Every command in the README is one the code accepts (issue 16: "the README's commands all succeed").

The commands are extracted from the README's ``bash`` blocks. Each one's flags are checked
against what its entry point takes (the recipes' flag table, the GLUE FinetuneConfig fields,
the ``skipxl`` command signatures), the scripts and tools it names must exist, and the cheap
ones are run for real with ``--dry_run`` where the data they name is present.
"""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import REPO, clean_env

from skipxl.engine.recipe import RECIPES

README = REPO / "README.md"
SKIP = ("make ", ".venv/bin/tensorboard")


def readme_commands() -> list[str]:
    """Shell commands of the README's bash blocks: continuations joined, comments dropped."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].split("||")[0].strip()
            if line and not line.startswith("#") and not line.startswith(SKIP):
                commands.append(line)
    return commands


def _flags(args: list[str]) -> list[str]:
    return [a[2:].partition("=")[0] for a in args if a.startswith("--") and a != "--"]


def _entry(words: list[str]) -> tuple[str, list[str]]:
    """``(kind, args)``: kind is a recipe name, ``glue``, ``skipxl <command>`` or ``tool``."""
    if words[0] == "deepspeed":  # launcher options come before the script
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        words = ["python", *words[script:]]
    if words[0] == "python" and words[1] == "-m" and words[2] == "skipxl.engine.memory":
        return "skipxl memory", words[3:]
    if words[0] == "python":
        script = Path(words[1])
        assert (REPO / script).is_file(), f"README names {script}, which does not exist"
        if script.parent.name == "recipes" and script.stem in ("glue", *RECIPES):
            return ("glue" if script.stem == "glue" else script.stem), words[2:]
        return "tool", words[2:]
    if words[0].endswith(".sh"):
        assert (REPO / words[0]).is_file(), f"README names {words[0]}, which does not exist"
        return "tool", words[1:]
    assert words[0] == "skipxl", words
    return f"skipxl {words[1]}", words[2:]


COMMANDS = readme_commands()


def test_the_readme_has_commands_of_every_kind():
    kinds = {_entry(shlex.split(c))[0] for c in COMMANDS}
    assert {"wt103", "enwik8", "glue", "skipxl memory", "skipxl eval", "skipxl export", "tool"} <= kinds


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_flags_are_accepted(command):
    from skipxl import cli
    from skipxl.engine.recipe import RECIPES, flag_table
    from skipxl.glue.finetune import FinetuneConfig
    from skipxl.glue.sweep import PER_RUN_FIELDS, RENAMED_FLAGS, SWEEP_OPTIONS

    kind, args = _entry(shlex.split(command))
    flags = _flags(args)
    train_flags = set(flag_table()) | set(inspect.signature(cli.train).parameters)
    if kind in RECIPES or kind == "skipxl train":
        valid = (train_flags | {"deepspeed", "deepspeed_config"}) - {"recipe"}
    elif kind == "glue":
        import dataclasses

        valid = {f.name for f in dataclasses.fields(FinetuneConfig)} - set(PER_RUN_FIELDS)
        valid |= set(SWEEP_OPTIONS) | set(RENAMED_FLAGS)
    elif kind == "tool":
        return  # the tools' own parsers; the file exists (checked in _entry)
    else:
        name = kind.split()[1]
        fn = cli.COMMANDS.get(name)
        if name in cli.LAZY_COMMANDS:
            module, attr, _ = cli.LAZY_COMMANDS[name]
            fn = cli._lazy(module, attr, name)
        assert fn is not None, f"README uses `{kind}`, which is not a command"
        valid = set(inspect.signature(fn).parameters)
        if name == "lm-sweep":  # its **flags go to every run's `skipxl train`
            valid |= train_flags
    unknown = sorted(set(flags) - valid)
    assert not unknown, f"README command `{command}` uses unknown flags {unknown}"


def _present(args: list[str]) -> bool:
    for flag in ("--data_dir", "--glue_dir"):
        if flag in args and not (REPO / args[args.index(flag) + 1]).exists():
            return False
    return True


GLUE_DATA = REPO.parent / "shared" / "data" / "glue"


@pytest.mark.parametrize("command", [c for c in COMMANDS if "recipes/glue.py --task" in c])
def test_readme_glue_commands_pass_a_dry_run(command, tmp_path):
    """The GLUE commands, as written, resolve (flags, files, DeepSpeed JSON) without training."""
    words = shlex.split(command)
    _, args = _entry(words)
    if "--model" in args and args[args.index("--model") + 1] not in ("minilm", "tiny-random"):
        pytest.skip("names a hub model (needs the network)")
    if "--glue_dir" not in args and not GLUE_DATA.is_dir():
        pytest.skip(f"{GLUE_DATA} is absent (GLUE from ../shared/data)")
    if not _present(args):
        pytest.skip("the README's data folder is not on this machine")
    res = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "glue.py"), *args, "--dry_run"],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO)),
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
