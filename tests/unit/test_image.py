"""The image builds: the Dockerfile's build stage, replayed without a Docker engine.

There is no Docker engine in `make test`, so a Dockerfile that copies too little (or a pyproject that packages
something the build never copies) would otherwise show only in CI's `docker build`. This replays the build stage
generically, from the Dockerfile itself:

1. the build context is the repository minus ``.dockerignore``: every COPY source must be in it;
2. WORKDIR and COPY are replayed into a scratch "image root", with Docker's COPY semantics;
3. each ``RUN ... pip install``: its ``-r`` files must have been copied by then, and its local paths (``.``) are
   installed with pip into a fresh venv, which must then hold every module the build copied in;
4. as in the final stage, which keeps only the venv, the installed ``etl`` command runs and ``celeryconfig`` and
   ``etl`` import from another directory.

Shortcut, to stay offline and take seconds: requirements are not downloaded. `pip install -r` is replayed by
symlinking this environment's installed distributions that the requirements bring (same pins, extras and markers
followed) into a directory that a .pth file puts on the fresh venv's path: the venv sees those and nothing else, so an
import of something requirements.txt does not bring fails here as in the image. The project is installed with pip
``--no-deps --no-build-isolation --check-build-dependencies``, pyproject's [build-system] requires exposed the same way.
"""

import importlib.metadata
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[2]
SUBCOMMANDS = ("init", "seed", "stats", "demo", "health", "keygen")  # `health` is what HEALTHCHECK and k8s run
TIMEOUT = 120


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, line continuations joined (no heredocs)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a line continuation"
    return out


def build_stage() -> list[tuple[str, str]]:
    """The first stage: its FROM up to (not including) the next FROM."""
    steps = instructions((ROOT / "Dockerfile").read_text())
    starts = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"]
    assert len(starts) >= 2, "expected a build stage and a final stage"
    return steps[starts[0] + 1 : starts[1]]


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=x --chown=a b c d` -> ({"from": "x", "chown": "a"}, ["b", "c", "d"]); JSON form too."""
    flags: dict[str, str] = {}
    while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s+", args):
        flags[match.group(1)] = match.group(2) or ""
        args = args[match.end() :]
    assert "<<" not in args, f"heredocs are not replayed: {args}"
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    return flags, words


@dataclass
class Copy:
    sources: list[str]  # relative to the build context
    dest: str  # absolute, in the image
    dest_is_dir: bool


@dataclass
class Run:
    command: str  # shell form
    workdir: str


def steps() -> list[Copy | Run]:
    """The build stage's COPY/ADD from the build context and RUN (shell form), with WORKDIR resolved."""
    workdir = "/"
    out: list[Copy | Run] = []
    for keyword, args in build_stage():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif keyword == "RUN":
            assert not args.startswith("["), f"RUN {args}: exec form is not replayed"
            out.append(Run(args, workdir))
        elif keyword in ("COPY", "ADD"):
            flags, words = split_flags(args)
            if "from" in flags:
                continue  # from another stage or image, not from the context
            *sources, dest = words
            assert sources, f"{keyword} {args}: no source"
            assert len(sources) == 1 or dest.endswith("/"), f"{keyword} {args}: several sources need a dest/ dir"
            sources = [posixpath.normpath(s.lstrip("/")) for s in sources]
            out.append(Copy(sources, posixpath.join(workdir, dest), dest.endswith("/")))
    return out


# --- .dockerignore --------------------------------------------------------------------------------------------------


def translate(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `**` any depth, `*` and `?` within one path segment (no [classes])."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!pattern`, regex) per .dockerignore line, in order."""
    path = ROOT / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip().strip("/"))
        rules.append((negate, re.compile(translate(pattern))))
    return rules


def excluded(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


def context_files(source: str, rules: list[tuple[bool, re.Pattern[str]]]) -> list[Path]:
    """The files of one COPY source (file, directory or glob) that the build context holds."""
    matches = sorted(ROOT.glob(source)) if any(c in source for c in "*?[") else [ROOT / source]
    files = []
    for match in matches:
        for path in sorted(match.rglob("*")) if match.is_dir() else [match]:
            if path.is_file() and not excluded(path.relative_to(ROOT).as_posix(), rules):
                files.append(path)
    return files


# --- the replay -----------------------------------------------------------------------------------------------------


def run(args: Sequence[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def pip_installs(command: str) -> list[list[str]]:
    """The arguments after `pip install` (or `python -m pip install`) in each command of a shell-form RUN."""
    words = shlex.split(command.replace(";", " ; ").replace("&&", " && ").replace("||", " || "))
    commands: list[list[str]] = [[]]
    for word in words:
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    out = []
    for cmd in commands:
        for i, word in enumerate(cmd):
            if posixpath.basename(word) in ("pip", "pip3") and cmd[i + 1 : i + 2] == ["install"]:
                out.append(cmd[i + 2 :])
                break
    return out


def requirement_lines(path: Path) -> list[str]:
    """A requirements file's requirements, following `-r` includes (options such as --hash are not supported)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            out += requirement_lines(path.parent / line.split(maxsplit=1)[1])
        elif line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that `pip install <requirements>` would bring, extras and markers followed."""
    todo = [Requirement(r) for r in requirements]
    done: dict[str, set[str]] = {}
    out = []
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), set(req.extras)
        if name in done and extras <= done[name]:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req} is not installed in this environment (`make install`)")
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"{req} but this environment has {dist.version} (`make install`)"
        )
        if name not in done:
            out.append(dist)
        done.setdefault(name, set()).update(extras)
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(dep)
    return out


def expose(dists: list[importlib.metadata.Distribution], view: Path) -> None:
    """Symlink these distributions' top-level modules and metadata (only theirs) into ``view``."""
    view.mkdir(exist_ok=True)
    for dist in dists:
        site = Path(str(dist.locate_file("")))
        assert dist.files, f"{dist.metadata['Name']}: no RECORD, cannot tell its files"
        for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
            if (site / top).exists() and not (view / top).exists():
                (view / top).symlink_to(site / top)


@dataclass
class Venv:
    """A fresh venv that sees only what the build stage installs into it.

    The dependencies are this environment's installed distributions (the same pins), symlinked into ``deps``,
    which a .pth file appends to the venv's sys.path: as fast as it gets, offline, and an import of something
    that requirements.txt does not bring still fails, as in the image.
    """

    root: Path
    purelib: Path
    deps: Path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @classmethod
    def create(cls, root: Path) -> "Venv":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
        env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
        result = run([sys.executable, "-m", "venv", "--without-pip", root], root.parent, env)
        assert result.returncode == 0, output(result)
        code = "import sysconfig; print(sysconfig.get_path('purelib'))"
        result = run([root / "bin" / "python", "-c", code], root.parent, env)
        assert result.returncode == 0, output(result)
        purelib, deps = Path(result.stdout.strip()), root / "deps"
        deps.mkdir()
        (purelib / "_image_test_deps.pth").write_text(f"{deps}\n")
        return cls(root, purelib, deps, env)

    def pip_install(self, args: list[str], workdir: Path) -> int:
        """Replay `pip install ARGS` run in ``workdir``; return how many local paths it installed."""
        requirements: list[str] = []
        local: list[Path] = []
        words = iter(args)
        for word in words:
            if word in ("-r", "--requirement") or (word.startswith("-r") and len(word) > 2):
                path = workdir / (next(words) if word in ("-r", "--requirement") else word[2:])
                assert path.is_file(), f"pip install {word} {path.name}: not copied before this RUN"
                requirements += requirement_lines(path)
            elif word in ("-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links"):
                next(words)
            elif not word.startswith("-"):
                if word.startswith((".", "/")):
                    local.append(workdir / word)
                else:
                    requirements.append(word)
        expose(closure(requirements), self.deps)
        for path in local:
            self.install_local(path, workdir)
        return len(local)

    def install_local(self, path: Path, workdir: Path) -> None:
        """pip install --no-deps PATH, with pip and pyproject's build backend from this environment."""
        pyproject = tomllib.loads((path / "pyproject.toml").read_text())
        build = path.parent / f"{path.name}-build-env"  # not inside the path: it is what gets built
        expose(closure(["pip", *pyproject["build-system"]["requires"]]), build)
        modules = [p.relative_to(path) for p in path.rglob("*.py") if p.name != "setup.py"]
        pip: list[str | Path] = [self.python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
        isolation = ["--no-build-isolation", "--check-build-dependencies"]
        result = run([*pip, *isolation, path], workdir, {**self.env, "PYTHONPATH": str(build)})
        assert result.returncode == 0, f"pip install {path} (as the build stage does) failed:\n{output(result)}"
        missing = [str(m) for m in modules if not (self.purelib / m).is_file()]
        assert not missing, f"copied into the image but not installed (pyproject packages/py-modules?): {missing}"


@dataclass
class Built:
    venv: Venv
    elsewhere: Path  # an empty directory to run from, like the final stage's WORKDIR


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("image")
    image = tmp / "root"  # the build stage's filesystem, as far as it is replayed
    venv = Venv.create(tmp / "venv")
    rules, installed = ignore_rules(), 0
    for step in steps():
        if isinstance(step, Copy):
            replay_copy(step, image, rules)
        else:
            workdir = image / step.workdir.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
            for pip_args in pip_installs(step.command):
                installed += venv.pip_install(pip_args, workdir)
    assert installed, "the build stage installs no local path (`pip install .`): nothing of the project is in it"
    (tmp / "elsewhere").mkdir()
    return Built(venv, tmp / "elsewhere")


def replay_copy(step: Copy, image: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    dest = image / step.dest.lstrip("/")
    for source in step.sources:
        files = context_files(source, rules)
        assert files, f"COPY {source}: nothing in the build context (missing, or excluded by .dockerignore)"
        base = ROOT / source
        for path in files:
            if base.is_dir():  # a directory's contents go into dest
                target = dest / path.relative_to(base)
            elif step.dest_is_dir or len(files) > 1:
                target = dest / path.name
            else:
                target = dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# --- the tests ------------------------------------------------------------------------------------------------------


def test_every_copy_source_is_in_the_build_context() -> None:
    rules = ignore_rules()
    copies = [s for s in steps() if isinstance(s, Copy)]
    assert copies, "the build stage copies nothing from the build context"
    for step in copies:
        for source in step.sources:
            matches = list(ROOT.glob(source)) if any(c in source for c in "*?[") else [ROOT / source]
            assert any(m.exists() for m in matches), f"COPY {source}: no such file in the repository"
            assert context_files(source, rules), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_translation() -> None:
    rules = [(False, re.compile(translate(p))) for p in ("tests", "**/__pycache__", "*.egg-info", "**/*.pyc")]
    rules.append((True, re.compile(translate("tests/keep.py"))))
    assert excluded("tests/unit/test_x.py", rules)
    assert not excluded("tests/keep.py", rules)
    assert excluded("__pycache__/x.pyc", rules) and excluded("etl/store/__pycache__/y", rules)
    assert excluded("etl.egg-info/PKG-INFO", rules) and not excluded("etl/x.egg-info", rules)
    assert not excluded("etl/ops/cli.py", rules) and not excluded("etl/tests.py", rules)


def test_installed_etl_command_runs(built: Built) -> None:
    etl = built.venv.root / "bin" / "etl"
    assert etl.is_file(), "pip did not install the `etl` console script ([project.scripts])"
    result = run([etl, "--help"], built.elsewhere, built.venv.env)
    assert result.returncode == 0, output(result)
    missing = [s for s in SUBCOMMANDS if not re.search(rf"\b{re.escape(s)}\b", result.stdout)]
    assert not missing, f"subcommands missing from `etl --help`: {missing}\n{output(result)}"
    result = run([etl, "health", "--help"], built.elsewhere, built.venv.env)
    assert result.returncode == 0, output(result)


def test_installed_app_imports_from_another_directory(built: Built) -> None:
    code = (
        "import celeryconfig, etl, etl.worker.celery as c; "
        "print(c.app.conf.task_default_queue, etl.__file__, celeryconfig.__file__)"
    )
    result = run([built.venv.python, "-c", code], built.elsewhere, built.venv.env)
    assert result.returncode == 0, output(result)
    queue, *files = result.stdout.split()
    assert queue == "etl", output(result)
    for file in files:  # the installed copies, not the repository's
        assert Path(file).is_relative_to(built.venv.purelib), f"imported {file}, not from {built.venv.purelib}"
