"""The command line starts without PyTorch: ``iwae --help`` and ``iwae COMMAND --help`` for every command
import no torch (nor numpy), in a fresh interpreter, so that help is instant; the configs that build
``iwae train``'s options load without it too. Running a command imports what it needs."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "matplotlib", "scipy", "safetensors", "ray", "tensorboard")

CHECK = """
import json, sys
from click.testing import CliRunner
from iwae.cli import COMMANDS, main

heavy = {heavy!r}
out = {{}}
for args in [["--help"], ["--version"]] + [[name, "--help"] for name in sorted(COMMANDS)]:
    result = CliRunner().invoke(main, args)
    out[" ".join(args)] = {{"exit": result.exit_code, "usage": "Usage:" in result.output or "version" in result.output,
                           "heavy": sorted(m for m in heavy if m in sys.modules)}}
print(json.dumps(out))
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_of_the_group_and_of_every_command_imports_no_torch():
    results = json.loads(_run(CHECK.format(heavy=HEAVY)))
    from iwae.cli import COMMANDS

    assert set(results) == {"--help", "--version"} | {f"{name} --help" for name in COMMANDS}
    for args, r in results.items():
        assert r["exit"] == 0 and r["usage"], (args, r)
        assert r["heavy"] == [], f"iwae {args} imported {r['heavy']}: import it inside the command that needs it"


def test_the_group_lists_every_command_and_runs_one_by_its_module():
    from click.testing import CliRunner

    from iwae.cli import COMMANDS, main

    listed = CliRunner().invoke(main, ["--help"]).output
    for name in COMMANDS:
        assert f"  {name} " in listed, name
    assert main.get_command(None, "nonexistent") is None
    wrong = CliRunner().invoke(main, ["trian"])
    assert wrong.exit_code == 2 and "No such command 'trian'" in wrong.output


def test_the_configs_and_the_package_import_without_torch():
    code = (
        "import sys, iwae, iwae.config, iwae.choices, iwae.errors; "
        "from iwae.config import TrainConfig; TrainConfig(out='x'); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert _run(code).strip() == "[]"
    # the lazy public API still gives the real objects on first use
    import iwae
    from iwae.models import VAE

    assert iwae.VAE is VAE and "VAE" in dir(iwae) and iwae.train.TrainConfig is iwae.config.TrainConfig
