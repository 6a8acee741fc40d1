"""``trainables`` never imports Ray or W&B: a trial must run (and be unit-tested) without them."""

import pkgutil
import subprocess
import sys

import trainables


def test_trainables_imports_neither_ray_nor_wandb():
    mods = sorted(m.name for m in pkgutil.walk_packages(trainables.__path__, "trainables."))
    assert "trainables.loop" in mods and "trainables.tasks" in mods
    code = ("import sys, importlib\n"
            f"for m in ['trainables', *{mods!r}]: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'wandb'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"trainables imported: {out.stdout.strip()}"
