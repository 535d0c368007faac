"""Entry points: ``vnetdp`` carries only the product and never loads the lab or the
benchmark; ``vnetdp-lab`` carries the lab and loads bench/ only for ``bench``;
the package ships neither bench/ nor netaddr."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Calls main() of one entry point with each argv, in a fresh interpreter (this
# one's sys.modules is the test session's), and prints each exit code, what went
# to stdout and stderr, and the modules loaded from the lab or bench/.
_PROBE = """
import contextlib, io, json, sys
from {module} import main

def call(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return {{"code": code, "out": out.getvalue(), "err": err.getvalue()}}

calls = [call(argv) for argv in json.loads(sys.argv[1])]
loaded = sorted(m for m in sys.modules
                if m in ("vnetdp.lab", "bench") or m.startswith(("vnetdp.lab.", "bench.")))
print(json.dumps({{"calls": calls, "loaded": loaded}}))
"""


def _probe(module: str, argvs: list[list[str]], cwd: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(module=module), json.dumps(argvs)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_product_command_has_only_product_commands_and_never_loads_the_lab(tmp_path):
    missing = str(tmp_path / "no-bpffs")
    product = ["counters", "snat", "install", "ipam", "node", "agent", "docker-plugin", "status", "endpoints",
               "stats", "metrics", "monitor", "reconcile", "upgrade", "policy"]
    result = _probe("vnetdp.cli", [
        ["--help"],
        *([cmd, "--help"] for cmd in product),
        # a node's commands, as far as they get without pinned maps
        ["counters", "--bpffs-dir", missing],
        ["snat", "list", "--bpffs-dir", missing],
        ["snat", "sweep", "--bpffs-dir", missing],
    ], cwd=tmp_path)
    calls = result["calls"]
    helps = len(product) + 1
    assert [c["code"] for c in calls[:helps]] == [0] * helps, calls
    assert "{" + ",".join(product) + "}" in calls[0]["out"]
    for c in calls[helps:]:
        assert c["code"] == 1 and c["err"].startswith("vnetdp: "), c
    assert result["loaded"] == []


def test_product_command_refuses_lab_and_bench(tmp_path):
    calls = _probe("vnetdp.cli", [["lab", "up"], ["bench"]], cwd=tmp_path)["calls"]
    assert all(c["code"] == 2 and "invalid choice" in c["err"] for c in calls), calls


def test_lab_command_carries_the_lab_and_loads_bench_only_to_run_it(tmp_path):
    commands = ["up", "down", "demo", "docker-demo", "nsg", "route", "lb", "public-ip", "bench"]
    result = _probe("vnetdp.lab.cli", [["--help"], *([cmd, "--help"] for cmd in commands)], cwd=tmp_path)
    assert [c["code"] for c in result["calls"]] == [0] * (len(commands) + 1), result["calls"]
    assert "{" + ",".join(commands) + "}" in result["calls"][0]["out"]
    assert not [m for m in result["loaded"] if m == "bench" or m.startswith("bench.")]


def test_lab_demos_take_their_arguments(monkeypatch):
    """``demo [--docker]`` and ``docker-demo`` run the one demo: the pods' rows,
    the container's, or both; exit 0 only when it says every path worked."""
    from vnetdp.lab import demo
    from vnetdp.lab.cli import main

    calls, verdict = [], [True]

    def run_demo(lab_id="", pool=30, out=print, pods=True, docker=False):
        calls.append((lab_id, pool, pods, docker))
        return verdict[0]

    monkeypatch.setattr(demo, "run_demo", run_demo)
    assert main(["docker-demo"]) == 0 and calls.pop() == ("", 30, False, True)
    assert main(["docker-demo", "--id", "t7", "--pool", "5"]) == 0 and calls.pop() == ("t7", 5, False, True)
    assert main(["demo"]) == 0 and calls.pop() == ("", 30, True, False)
    assert main(["demo", "--docker", "--id", "t7"]) == 0 and calls.pop() == ("t7", 30, True, True)
    verdict[0] = False
    assert main(["docker-demo"]) == 1 and calls.pop() == ("", 30, False, True)
    for argv in (["docker-demo", "--docker"], ["docker-demo", "--pool", "many"], ["docker-demo", "extra"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
    assert calls == []


def test_lab_command_finds_the_checkouts_bench():
    from vnetdp.lab.cli import checkout_root

    assert checkout_root() == REPO and (REPO / "bench" / "run.py").is_file()


def test_packaging_ships_the_product_only():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"vnetdp": "vnetdp.cli:main", "vnetdp-lab": "vnetdp.lab.cli:main"}
    assert not [p for p in project["tool"]["setuptools"]["packages"]["find"]["include"] if p.startswith("bench")]
    assert not [d for d in project["project"]["dependencies"] if d.startswith("netaddr")]


def test_nothing_imports_netaddr():
    """netaddr was dropped as a dependency: ipaddress does pool and range arithmetic."""
    uses = [str(p.relative_to(REPO)) for top in ("vnetdp", "bench", "tests", "cni", "tools")
            for p in (REPO / top).rglob("*") if p.is_file() and p.suffix in ("", ".py")
            and re.search(r"^\s*(import|from)\s+netaddr\b", p.read_text(errors="replace"), re.M)]
    assert uses == []


@pytest.mark.parametrize("argv", [["agent", "--sweep-every"], ["snat", "sweep", "--bpffs-dir", "/nonexistent",
                                                               "--every"]])
@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "soon"])
def test_a_sweep_interval_must_be_a_finite_time_above_zero(argv, seconds, capsys):
    """The agent's loop and `snat sweep --every` would spin on zero or less."""
    from vnetdp import cli
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, seconds])
    err = capsys.readouterr().err
    assert e.value.code == 2 and ("above zero" in err or "not a number of seconds" in err), err
    assert cli._seconds("0.5") == 0.5 and type(cli._seconds("2")) is float  # what a valid one parses to
