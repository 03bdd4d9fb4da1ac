"""The wheels and data that travel to the offline GPU machine, checked without that machine.

The GPU image has PyTorch and the scientific stack but not segmentation-models-pytorch, nbval
or the Jupyter kernel machinery, and it cannot download anything. ``gpu_payload.txt`` pins the
rest of their dependency closure; ``prepare_gpu_payload.sh`` downloads it into ``.gpu/``. This
module verifies such a folder: every wheel installs on CPython 3.12 manylinux x86_64, there is
one version of each package, every requirement of every wheel is met by the payload or by the
image (``gpu_machine_packages.txt``), and the Fashion-MNIST files are there.

    python scripts/gpu_payload.py check [.gpu]     # exit status 1 and a list when not
"""

from __future__ import annotations

import email.parser
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAYLOAD_DIR = REPO / ".gpu"
PINNED_LIST = HERE / "gpu_payload.txt"
MACHINE_LIST = HERE / "gpu_machine_packages.txt"
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# what the GPU run imports beyond sar's own dependencies (pyproject.toml)
RUN_NEEDS = ("segmentation-models-pytorch", "nbval", "nbclient", "nbformat", "jupyter-client",
             "ipykernel", "pytest", "packaging")
TARGET_PYTHON = (3, 12)
# the image is Ubuntu 24.04 (Python 3.12.3): glibc 2.39, so manylinux_2_5 .. 2_39 all load
TARGET_PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
                    *(f"manylinux_2_{n}_x86_64" for n in range(5, 40))]
# environment markers (PEP 508) as the GPU machine evaluates them
TARGET_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}


# ------------------------------------------------------------------------------- the lists
def read_pins(path: Path) -> dict[NormalizedName, Version | None]:
    """``name==version`` (or a bare name) per line of ``path``; ``#`` starts a comment."""
    pins: dict[NormalizedName, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version) if version else None
    return pins


def sar_dependencies() -> list[NormalizedName]:
    """The runtime dependencies in ``pyproject.toml`` (none where ``tomllib`` is missing)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [canonicalize_name(Requirement(r).name) for r in project["dependencies"]]


# ---------------------------------------------------------------------------------- wheels
def target_tags() -> set[Tag]:
    """Every wheel tag that CPython 3.12 on manylinux x86_64 accepts."""
    tags = set(cpython_tags(TARGET_PYTHON, platforms=TARGET_PLATFORMS))
    return tags | set(compatible_tags(TARGET_PYTHON, "cp312", TARGET_PLATFORMS))


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The ``Requires-Dist`` entries of ``wheel`` that apply on the GPU machine (no extras)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist()
                    if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        metadata = email.parser.BytesParser().parsebytes(archive.read(name), headersonly=True)
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(TARGET_MARKERS)]


def tag_problems(wheels: Iterable[Path]) -> list[str]:
    accepted = target_tags()
    return [f"{w.name}: not installable on CPython 3.12 manylinux x86_64" for w in wheels
            if not parse_wheel_filename(w.name)[3] & accepted]


def duplicate_problems(wheels: Iterable[Path]) -> list[str]:
    seen: dict[NormalizedName, str] = {}
    problems = []
    for wheel in wheels:
        name = parse_wheel_filename(wheel.name)[0]
        if name in seen:
            problems.append(f"two versions of {name}: {seen[name]} and {wheel.name}")
        seen[name] = wheel.name
    return problems


def pin_problems(wheels: Iterable[Path], pins: dict[NormalizedName, Version | None]) -> list[str]:
    """The wheels are exactly the pinned versions, no more, no fewer."""
    found = {parse_wheel_filename(w.name)[0]: parse_wheel_filename(w.name)[1] for w in wheels}
    problems = [f"{name}=={version} is pinned but its wheel is missing"
                for name, version in pins.items() if found.get(name) != version]
    problems += [f"{name}=={version}: a wheel that gpu_payload.txt does not pin"
                 for name, version in found.items() if name not in pins]
    return problems


def closure_problems(wheels: Iterable[Path], machine: dict[NormalizedName, Version | None],
                     ) -> tuple[list[str], list[str]]:
    """Requirements met by neither the payload nor the image; and those whose version on the
    image is unknown, so that only the GPU run can tell (informational)."""
    wheels = list(wheels)
    payload = {parse_wheel_filename(w.name)[0]: parse_wheel_filename(w.name)[1] for w in wheels}
    problems, unverified = [], []
    for wheel in wheels:
        for req in wheel_requirements(wheel):
            name = canonicalize_name(req.name)
            version = payload.get(name, machine.get(name))
            where = f"{parse_wheel_filename(wheel.name)[0]} needs {req}"
            if name not in payload and name not in machine:
                problems.append(f"{where}: in neither the payload nor the GPU image")
            elif version is None:
                if req.specifier:
                    unverified.append(where)
            elif not req.specifier.contains(version, prereleases=True):
                problems.append(f"{where}, but {version} is what travels or is there")
    return problems, unverified


def coverage_problems(wheels: Iterable[Path], machine: dict[NormalizedName, Version | None],
                      ) -> list[str]:
    """Every package the GPU run imports comes from the payload or the image."""
    available = {parse_wheel_filename(w.name)[0] for w in wheels} | set(machine)
    needed = {canonicalize_name(n) for n in RUN_NEEDS} | set(sar_dependencies())
    return [f"the GPU run needs {name}, which neither travels nor is on the image"
            for name in sorted(needed - available)]


def data_problems(folder: Path) -> list[str]:
    return [f"{folder / 'fashion-mnist' / name} is missing" for name in FASHION_FILES
            if not (folder / "fashion-mnist" / name).is_file()]


# ---------------------------------------------------------------------------------- check
def check(folder: Path = PAYLOAD_DIR) -> tuple[list[str], list[str]]:
    """``(problems, unverified)`` for a payload folder (``.gpu/``); no problems means ready."""
    wheels = sorted((folder / "wheels").glob("*.whl"))
    if not wheels:
        return [f"no wheels in {folder / 'wheels'}: run scripts/prepare_gpu_payload.sh"], []
    machine = read_pins(MACHINE_LIST)
    closure, unverified = closure_problems(wheels, machine)
    problems = (tag_problems(wheels) + duplicate_problems(wheels)
                + pin_problems(wheels, read_pins(PINNED_LIST)) + closure
                + coverage_problems(wheels, machine) + data_problems(folder))
    carried_by_both = sorted({parse_wheel_filename(w.name)[0] for w in wheels} & set(machine))
    problems += [f"{name} travels but the GPU image has it already" for name in carried_by_both]
    return problems, unverified


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "check":
        print(__doc__)
        return 2
    folder = Path(argv[1]) if len(argv) > 1 else PAYLOAD_DIR
    problems, unverified = check(folder)
    wheels = len(list((folder / "wheels").glob("*.whl")))
    if unverified:
        print(f"{len(unverified)} requirement(s) on image packages whose version is not recorded"
              " here (the GPU run's payload step checks them there):")
        print("  " + "; ".join(unverified))
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"{folder}: {wheels} wheels, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
