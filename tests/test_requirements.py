"""requirements.txt, setup.py and requirements.lock agree: ranges with upper bounds, locked
versions inside them."""

import re
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _requirements_txt() -> dict[str, Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(r.name): r for r in requirements}


def _locked() -> dict[str, str]:
    pins = re.findall(
        r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", (ROOT / "requirements.lock").read_text(), re.M
    )
    return {canonicalize_name(name): version for name, version in pins}


def test_every_requirement_is_bounded_and_locked_inside_its_range():
    locked = _locked()
    for name, requirement in _requirements_txt().items():
        operators = {spec.operator for spec in requirement.specifier}
        assert "<" in operators, f"requirements.txt: {requirement} has no upper bound"
        assert name in locked, f"requirements.lock has no pin for {name}: run make lock"
        assert locked[name] in requirement.specifier, (
            f"requirements.lock pins {name}=={locked[name]} outside {requirement}: run make lock"
        )
    assert locked["torch"] == "2.14.1" and locked["torchvision"] == "0.29.1"


def test_setup_py_states_the_same_ranges_as_requirements_txt():
    listed = _requirements_txt()
    for line in requires("fiber_det"):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in ("torch", "torchvision"):
            continue
        assert str(requirement.specifier) == str(listed[name].specifier), (
            f"setup.py says {requirement}, requirements.txt says {listed[name]}"
        )
