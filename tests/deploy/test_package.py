"""The production package carries no test rig: `pip wheel .` holds no simulator, broker launcher,
harness, demo or bench module, and the console script says what is missing for `demo` and `sandbox`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.integration.support import figure

REPO = Path(__file__).resolve().parents[2]
RIGS = ("sandbox", "simulator", "kafka_broker", "harness", "scenarios", "demo", "schema_registry.py", "bench")


def test_the_wheel_holds_no_simulator_broker_launcher_or_harness(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, REPO],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = tmp_path.glob("activity_connector-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = [n for n in names if n.endswith(".py")]
    figure(f"\nwheel {wheel.name}: {len(modules)} modules, none of {', '.join(RIGS)}")
    assert "connector/cli.py" in names and "connector/schemas/rally_uxr_activity.avsc" in names
    assert all(n.startswith(("connector/", "activity_connector-")) for n in names), names
    # The registry client (connector/codec/registry.py) is production code; the registry launcher is not.
    assert [n for n in modules if any(rig in n for rig in RIGS) and n != "connector/codec/registry.py"] == []


def test_demo_and_sandbox_say_what_is_missing_without_the_sandbox_package(tmp_path: Path) -> None:
    # The sandbox package hidden, as in the image: a module of that name that cannot be imported.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nclass _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'connector_sandbox':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    for command in (["demo"], ["sandbox", "--port", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "connector", *command],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(hide), "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert "activity-connector-sandbox package, which is not installed" in done.stderr
        assert "Traceback" not in done.stderr
