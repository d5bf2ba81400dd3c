"""Packaging: the systemd units, the wheel and sdist, and the Debian package.

Nothing here installs into the system.  The wheel goes into a throwaway venv; the
.deb is unpacked with `dpkg-deb -x` into a throwaway root and its maintainer
scripts run against that root (CAL_AGENT_ROOT, a switch for these tests only).
pip fetches cal-agent's dependencies from the package index (its cache helps).

Tools that are missing (systemd-analyze, dpkg-deb, shellcheck, python3-venv,
the `build` module) skip the tests locally and fail them with CI=true, as for
the test servers (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import __version__
from tests.conftest import _unavailable

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
UNITS = sorted(UNIT_DIR.glob("*.service")) + sorted(UNIT_DIR.glob("*.timer"))
SERVICES = sorted(UNIT_DIR.glob("*.service"))
BUILD_DEB = REPO / "packaging" / "debian" / "build-deb"
SYSTEM_PYTHON = "/usr/bin/python3"  # what the .deb's postinst builds its venv with
MAX_EXPOSURE = 2.0
SLOW = 900  # seconds: a pip install fetching every dependency


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        _unavailable(f"{name} not installed (Debian package {package}; tests/run installs it)")
    return path


def _run(cmd, *, timeout: float = SLOW, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point Python or cal-agent at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CAL_AGENT_CONFIG", "CAL_AGENT_ROOT",
                        "CAL_AGENT_PIP_ARGS")}
    env.update(extra)
    return env


def _deb_version(version: str) -> str:
    return re.sub(r"\.?(a|b|rc|dev)(\d*)", r"~\1\2", version).replace(".post", "+post")


# ---------------------------------------------------------------- systemd units


def test_units_pass_systemd_analyze_verify():
    analyze = _tool("systemd-analyze", "systemd")
    assert {u.name for u in UNITS} >= {"cal-agent.service", "cal-agent-once.service", "cal-agent-once.timer"}
    proc = _run([analyze, "verify", *UNITS], check=False, timeout=120)
    about_ours = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "cal-agent" in line]
    assert proc.returncode == 0, proc.stderr
    assert about_ours == []


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_service_exposure_is_low(unit: Path):
    analyze = _tool("systemd-analyze", "systemd")
    proc = _run([analyze, "security", "--offline=yes", "--no-pager", unit], timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_services_match_what_the_package_installs(unit: Path):
    """The package makes a static user and /var/lib/cal-agent; the units must use exactly those."""
    s = _unit_settings(unit)
    assert s["User"] == ["cal-agent"] and s["Group"] == ["cal-agent"]
    # DynamicUser=yes would move the state to /var/lib/private/cal-agent.
    assert s.get("DynamicUser", ["no"]) == ["no"]
    assert s["StateDirectory"] == ["cal-agent"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ConfigurationDirectoryMode"] == ["0750"]
    assert s["ExecStart"][0].startswith("/usr/bin/env cal-agent --config /etc/cal-agent/config.yaml run")
    assert s["LoadCredential"] == ["bind-password:/etc/cal-agent/bind-password"]


# ---------------------------------------------------------------- wheel and sdist


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """`python -m build`: the sdist, and the wheel built from it.  Shared by every test here."""
    try:
        import build  # noqa: F401
    except ImportError:
        _unavailable("the `build` module is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=REPO, env=_clean_env())
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"cal_agent-{__version__}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"cal_agent-{__version__}.tar.gz"]
    return {"wheel": wheels[0], "sdist": sdists[0]}


def _package_files() -> list[str]:
    """Every file of the `agent` package in the checkout (tracked by git when it is a git checkout)."""
    proc = subprocess.run(["git", "ls-files", "agent"], cwd=REPO, check=False, capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        names = proc.stdout.split()
    else:
        names = [str(p.relative_to(REPO)) for p in (REPO / "agent").rglob("*") if p.is_file()]
    return sorted(n for n in names if "__pycache__" not in n and not n.endswith(".pyc")
                  # Alembic's template for `alembic revision`: not needed to run migrations.
                  and not n.endswith("script.py.mako"))


def test_wheel_ships_every_module_and_data_file(dists):
    with zipfile.ZipFile(dists["wheel"]) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"cal_agent-{__version__}.dist-info/entry_points.txt").decode()
    missing = [n for n in _package_files() if n not in names]
    assert missing == [], "not in the wheel (add data files to [tool.setuptools.package-data])"
    assert "cal-agent = agent.cli:main" in entry_points


def test_sdist_ships_the_package_and_its_build_config(dists):
    with tarfile.open(dists["sdist"]) as tf:
        top = f"cal_agent-{__version__}/"
        names = {n[len(top):] for n in tf.getnames() if n.startswith(top)}
    assert {"pyproject.toml", "PKG-INFO", "README.md"} <= names
    missing = [n for n in _package_files() if n not in names]
    assert missing == []


def _make_wheel_venv(wheel: Path, where: Path) -> Path:
    venv = where / "venv"
    _run([sys.executable, "-m", "venv", venv], env=_clean_env())
    # Without byte-compiling: this venv is run once.
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-compile", wheel], env=_clean_env())
    return venv


def _postinst_root(deb: Path, control_dir: Path, root: Path) -> Path:
    _run(["dpkg-deb", "-x", deb, root], timeout=60)
    _run(["sh", control_dir / "postinst", "configure"], env=_clean_env(CAL_AGENT_ROOT=str(root)))
    return root


@pytest.fixture(scope="module")
def installs(request, dists, tmp_path_factory):
    """The two slow installs, run at the same time (each is mostly pip fetching and unpacking):

    * "wheel": a fresh venv with only the wheel (and its dependencies) installed;
    * "root": the .deb unpacked into a throwaway root, with its postinst run against that root
      (or the skip/failure that kept it from running).
    """
    pool = ThreadPoolExecutor(max_workers=2)
    jobs: dict = {"wheel": pool.submit(_make_wheel_venv, dists["wheel"], tmp_path_factory.mktemp("wheel-venv"))}
    try:
        deb = request.getfixturevalue("deb")
        control = request.getfixturevalue("control_dir")
        if not Path(SYSTEM_PYTHON).exists():
            _unavailable(f"{SYSTEM_PYTHON} not found (the package's postinst needs Debian's python3)")
        if subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], check=False, capture_output=True).returncode:
            _unavailable(f"{SYSTEM_PYTHON} cannot make a venv (Debian package python3-venv; tests/run installs it)")
        jobs["root"] = pool.submit(_postinst_root, deb, control, tmp_path_factory.mktemp("root"))
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        jobs["root"] = exc
    yield jobs
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def wheel_venv(installs) -> Path:
    return installs["wheel"].result()


def test_installed_wheel_reports_its_version(wheel_venv, tmp_path):
    proc = _run([wheel_venv / "bin" / "cal-agent", "--version"], cwd=tmp_path, env=_clean_env(), timeout=60)
    assert proc.stdout.strip() == f"cal-agent, version {__version__}"
    # ... and it is the installed copy, not this checkout.
    proc = _run([wheel_venv / "bin" / "python", "-c", "import agent; print(agent.__file__)"],
                cwd=tmp_path, env=_clean_env(), timeout=60)
    assert Path(proc.stdout.strip()).is_relative_to(wheel_venv)


def test_installed_wheel_runs_the_demo(wheel_venv, tmp_path):
    out = tmp_path / "demo"
    _run([wheel_venv / "bin" / "cal-agent", "demo", "--output", out], cwd=tmp_path, env=_clean_env(),
         timeout=300)
    report = json.loads((out / "reports" / "latest.json").read_text())
    assert report["findings"], "the demo data must produce findings"
    assert (out / "reports" / "latest.html").stat().st_size > 0


# ---------------------------------------------------------------- the Debian package


def _build_deb(out: Path, *extra) -> Path:
    _tool("dpkg-deb", "dpkg")
    proc = _run(["bash", BUILD_DEB, "--out", out, *extra], cwd=REPO, env=_clean_env(PYTHON=sys.executable))
    deb = Path(proc.stdout.strip().splitlines()[-1])
    assert deb == out / f"cal-agent_{_deb_version(__version__)}_all.deb"
    assert deb.is_file()
    return deb


@pytest.fixture(scope="module")
def deb(dists, tmp_path_factory) -> Path:
    """The .deb of the shared wheel, as `packaging/debian/build-deb --wheel` makes it."""
    return _build_deb(tmp_path_factory.mktemp("deb"), "--wheel", dists["wheel"])


def _contents(deb: Path) -> dict[str, tuple[str, str, str]]:
    """`dpkg-deb -c`: path (absolute) -> (mode string, owner/group, link target or "")."""
    entries = {}
    for line in _run(["dpkg-deb", "-c", deb], timeout=60).stdout.splitlines():
        fields = line.split(None, 5)
        mode, owner, name = fields[0], fields[1], fields[5]
        target = ""
        if " -> " in name:
            name, target = name.split(" -> ", 1)
        entries["/" + name.removeprefix("./").rstrip("/")] = (mode, owner, target)
    return entries


def test_deb_control_fields(deb):
    fields = _run(["dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"], timeout=60).stdout
    assert "Package: cal-agent\n" in fields
    assert f"Version: {_deb_version(__version__)}\n" in fields
    assert "Architecture: all\n" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.MULTILINE).group(1)
    assert {d.strip() for d in depends.split(",")} >= {"python3 (>= 3.11)", "python3-venv", "adduser"}


def test_deb_contents(deb):
    files = _contents(deb)
    wheel = f"/opt/cal-agent/wheels/cal_agent-{__version__}-py3-none-any.whl"
    assert files[wheel][0] == "-rw-r--r--"
    assert files["/usr/bin/cal-agent"][0].startswith("l")
    assert files["/usr/bin/cal-agent"][2] == "/opt/cal-agent/venv/bin/cal-agent"
    assert files["/etc/cal-agent/config.yaml"][0] == "-rw-r-----"
    for unit in UNITS:
        assert files[f"/lib/systemd/system/{unit.name}"][0] == "-rw-r--r--"
    assert "/usr/share/doc/cal-agent/copyright" in files
    assert "/usr/share/doc/cal-agent/install.md" in files
    assert {owner for _, owner, _ in files.values()} == {"root/root"}
    # The venv, the state directory and the user are made by postinst, not shipped.
    assert not any(p.startswith(("/opt/cal-agent/venv", "/var/")) for p in files)
    conffiles = _run(["dpkg-deb", "-I", deb, "conffiles"], timeout=60).stdout.split()
    assert conffiles == ["/etc/cal-agent/config.yaml"]


def test_deb_builds_its_own_wheel_by_default(deb, tmp_path):
    """`build-deb` without --wheel builds one: same package layout as with the shared wheel."""
    own = _build_deb(tmp_path)
    assert set(_contents(own)) == set(_contents(deb))


@pytest.fixture(scope="module")
def control_dir(deb, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("control") / "DEBIAN"
    _run(["dpkg-deb", "-e", deb, path], timeout=60)
    return path


def test_maintainer_scripts_are_posix_sh(control_dir):
    shellcheck = _tool("shellcheck", "shellcheck")
    scripts = [control_dir / name for name in ("postinst", "prerm", "postrm")]
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n")
        assert re.search(r"^set -e$", text, re.MULTILINE), script.name
        assert not re.search(r"@[A-Z_]+@", text), f"{script.name}: a placeholder was not filled in"
        assert script.stat().st_mode & stat.S_IXUSR
        _run(["sh", "-n", script], timeout=60)
    _run([shellcheck, "--shell=sh", *scripts], timeout=120)
    _run([shellcheck, BUILD_DEB], timeout=120)


@pytest.fixture(scope="module")
def installed_root(installs) -> Path:
    """The .deb unpacked into a throwaway root, with its postinst run against that root."""
    job = installs["root"]
    if isinstance(job, BaseException):
        raise job
    return job.result()


def _venvs(root: Path) -> list[Path]:
    return sorted((root / "opt/cal-agent/venvs").iterdir())


def test_postinst_installs_the_wheel_into_a_venv(installed_root):
    root = installed_root
    proc = _run([root / "opt/cal-agent/venv/bin/cal-agent", "--version"], cwd=root, env=_clean_env(), timeout=60)
    assert proc.stdout.strip() == f"cal-agent, version {__version__}"
    venv = root / "opt/cal-agent/venv"
    assert venv.is_symlink() and not os.readlink(venv).startswith("/")
    assert [p.name for p in _venvs(root)] == [os.readlink(venv).removeprefix("venvs/")]
    cfg = (venv / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", cfg, re.MULTILINE), cfg
    assert stat.S_IMODE((root / "var/lib/cal-agent").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "etc/cal-agent").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "etc/cal-agent/config.yaml").stat().st_mode) == 0o640
    assert os.readlink(root / "usr/bin/cal-agent") == "/opt/cal-agent/venv/bin/cal-agent"


def test_postinst_again_switches_venvs_only_when_pip_succeeds(installed_root, control_dir):
    root = installed_root
    before = os.readlink(root / "opt/cal-agent/venv")
    # CAL_AGENT_PIP_ARGS reaches pip: an empty wheelhouse makes the install fail ...
    empty = root.parent / "empty-wheelhouse"
    empty.mkdir(exist_ok=True)
    proc = _run(["sh", control_dir / "postinst", "configure", "0.0.1"], check=False,
                env=_clean_env(CAL_AGENT_ROOT=str(root), CAL_AGENT_PIP_ARGS=f"--no-index --find-links {empty}"))
    assert proc.returncode != 0
    # ... and the installed venv is untouched, with no half-made one beside it.
    assert os.readlink(root / "opt/cal-agent/venv") == before
    assert len(_venvs(root)) == 1
    # A successful run (an upgrade, or a reinstall) replaces it and removes the old one.
    _run(["sh", control_dir / "postinst", "configure", __version__],
         env=_clean_env(CAL_AGENT_ROOT=str(root), CAL_AGENT_PIP_ARGS="--no-compile"))
    after = os.readlink(root / "opt/cal-agent/venv")
    assert after != before
    assert [f"venvs/{p.name}" for p in _venvs(root)] == [after]
    proc = _run([root / "opt/cal-agent/venv/bin/cal-agent", "--version"], cwd=root, env=_clean_env(), timeout=60)
    assert __version__ in proc.stdout


def test_remove_keeps_data_and_purge_deletes_it(deb, control_dir, tmp_path):
    """prerm/postrm against an unpacked root with a (fake) venv and state, as dpkg runs them."""
    root = tmp_path / "root"
    _run(["dpkg-deb", "-x", deb, root], timeout=60)
    venv = root / "opt/cal-agent/venvs" / f"{__version__}.abcdef"
    (venv / "bin").mkdir(parents=True)
    (root / "opt/cal-agent/venv").symlink_to(f"venvs/{venv.name}")
    (root / "var/lib/cal-agent/reports").mkdir(parents=True)
    (root / "var/lib/cal-agent/state.db").write_text("")
    (root / "etc/cal-agent/bind-password").write_text("secret")
    env = _clean_env(CAL_AGENT_ROOT=str(root))

    _run(["sh", control_dir / "prerm", "remove"], env=env, timeout=60)
    assert not (root / "opt/cal-agent/venvs").exists() and not (root / "opt/cal-agent/venv").is_symlink()
    # dpkg now deletes the package's files except conffiles, then its directories that are empty.
    entries = _contents(deb)
    for path, (mode, _, _) in entries.items():
        if not mode.startswith("d") and path != "/etc/cal-agent/config.yaml":
            (root / path.lstrip("/")).unlink()
    for path in sorted((p for p, (m, _, _) in entries.items() if m.startswith("d") and p != ""), reverse=True):
        target = root / path.lstrip("/")
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
    _run(["sh", control_dir / "postrm", "remove"], env=env, timeout=60)
    assert not (root / "opt/cal-agent").exists()
    assert (root / "etc/cal-agent/config.yaml").is_file()
    assert (root / "etc/cal-agent/bind-password").is_file()
    assert (root / "var/lib/cal-agent/state.db").is_file()

    _run(["sh", control_dir / "postrm", "purge"], env=env, timeout=60)
    assert not (root / "etc/cal-agent").exists()
    assert not (root / "var/lib/cal-agent").exists()
