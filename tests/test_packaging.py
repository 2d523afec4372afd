"""What a user installs: the wheel holds the programs and their templates and nothing of the test tree; a pipx
install of it renders, checks and reports from outside the source tree; the NetworkManager hook the Debian
package ships calls the packaged ikectl. (The .deb itself is installed, used and purged in the VM:
netns_tests/test_package_deb.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildtools import nm_hook

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"ikectl", "enclave_ike", "ikecommon"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `python -m build` makes from this tree (in an isolated build environment, as pip would)."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(PROJECT_ROOT)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (found,) = out.glob("ikectl-*.whl")
    return found


def test_the_wheel_holds_the_programs_their_templates_and_no_test_tree(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == PROGRAMS
    templates = {str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "ikectl/templates").rglob("*.j2")}
    assert templates and templates <= set(names)
    assert "ikectl/py.typed" in names and "ikecommon/py.typed" in names
    roots = {str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "ikecommon/attestation/data/roots").iterdir()}
    assert {"ikecommon/attestation/data/roots/amd-ark-milan.pem", "ikecommon/attestation/data/roots/SOURCES.md"} \
        <= roots <= set(names)  # the vendors' roots and their provenance
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "ikectl = ikectl.cli:run" in text and "enclave-ike = enclave_ike.cli:main" in text


@pytest.fixture(scope="module")
def pipx_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`pipx install` of the wheel with Debian's python3, in a pipx home of its own; the directory of its programs."""
    pipx = shutil.which("pipx")
    if pipx is None:
        pytest.fail("pipx is not installed: scripts/setup installs it")
    home = tmp_path_factory.mktemp("pipx")
    env = {**os.environ, "PIPX_HOME": str(home / "home"), "PIPX_BIN_DIR": str(home / "bin"),
           "PIPX_MAN_DIR": str(home / "man")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([pipx, "install", "--python", "/usr/bin/python3", str(wheel)], env=env, cwd=home,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield home / "bin"
    shutil.rmtree(home, ignore_errors=True)


def run_installed(bin_dir: Path, program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Away from the source tree (cwd elsewhere, no PYTHONPATH): only the installed copy can answer.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "IKECTL_CONFIG")}
    return subprocess.run([str(bin_dir / program), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=120)


def test_a_pipx_install_renders_from_its_own_templates(pipx_install: Path, tmp_path: Path) -> None:
    config = tmp_path / "ikectl.toml"
    config.write_text('mode = "coffee-shop"\n')
    out = tmp_path / "tree"
    done = run_installed(pipx_install, "ikectl", "--config", str(config), "render", "--mode", "coffee-shop",
                         "--resolver", "192.0.2.53", "--source", "192.0.2.10", "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    conf = (out / "ipsec.conf").read_text()
    assert "private-or-clear" in conf and "192.0.2.53" in (out / "ipsec.d/policies/private-or-clear").read_text()
    located = subprocess.run([str(pipx_install.parent / "home/venvs/ikectl/bin/python"), "-c",
                              "import ikectl; print(ikectl.__file__)"], cwd=tmp_path, capture_output=True,
                             text=True, check=True)
    assert "/home/venvs/ikectl/" in located.stdout and str(PROJECT_ROOT) not in located.stdout


def test_a_pipx_install_loads_the_shipped_roots_from_its_own_files(pipx_install: Path, tmp_path: Path) -> None:
    loaded = subprocess.run([str(pipx_install.parent / "home/venvs/ikectl/bin/python"), "-c",
                             "from ikecommon.attestation import roots\n"
                             "from ikecommon.attestation.verify import TrustAnchors\n"
                             "anchors = TrustAnchors.shipped()\n"
                             "print(len(anchors.amd_arks), roots.certificate.cache_info().currsize, roots.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    count, cached, where = loaded.stdout.split()
    assert (count, cached) == ("3", "4") and "/home/venvs/ikectl/" in where and str(PROJECT_ROOT) not in where


@pytest.mark.skipif(os.geteuid() != 0, reason="status and doctor read root's run state")
def test_a_pipx_install_reports_status_and_checks_the_host(pipx_install: Path, tmp_path: Path) -> None:
    config = tmp_path / "ikectl.toml"
    config.write_text(f'mode = "coffee-shop"\n[paths]\nrun_dir = "{tmp_path}/run"\n')
    status = run_installed(pipx_install, "ikectl", "--config", str(config), "status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip(), "status printed nothing"
    doctor = run_installed(pipx_install, "ikectl", "--config", str(config), "doctor", cwd=tmp_path)
    assert doctor.returncode in (0, 1), doctor.stderr
    assert f"config: {config} is valid" in doctor.stdout and "pluto: " in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr


def test_a_pipx_install_of_enclave_ike_serves_with_the_sim_enclave_without_warnings(pipx_install: Path,
                                                                                 tmp_path: Path) -> None:
    port = 20000 + os.getpid() % 20000
    config = tmp_path / "enclave-ike.toml"
    config.write_text(f'[listen]\naddresses = ["127.0.0.1"]\nike_port = {port}\nnatt_port = {port + 1}\n'
                      f'[identity]\nbackend = "sim"\nid = "@resolver.test"\npublish = "{tmp_path}/identity.json"\n'
                      '[apply]\nmode = "none"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(pipx_install / "enclave-ike"), "serve", "--config", str(config)], env=env,
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "identity.json").exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        shown = run_installed(pipx_install, "enclave-ike", "identity", "--config", str(config), "--format", "json",
                              cwd=tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert shown.returncode == 0, shown.stderr + log.read_text()
    assert "@resolver.test" in shown.stdout
    assert "Warning" not in log.read_text() and "Traceback" not in log.read_text(), log.read_text()


def test_the_sim_enclave_child_starts_without_a_runtime_warning() -> None:
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "enclave_ike.enclave.sim_child",
                           "--help"], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)
    assert done.returncode == 0 and "RuntimeWarning" not in done.stderr, done.stderr


def test_the_packaged_hook_calls_the_packaged_ikectl(tmp_path: Path) -> None:
    written = nm_hook.write_hook(tmp_path, Path("/usr/bin/ikectl"), Path("/etc/ikectl/ikectl.toml"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "dispatcher.d/10-ikectl", "dispatcher.d/pre-up.d/10-ikectl"]
    for path in written:
        text = path.read_text()
        assert text.splitlines()[-1] == 'exec /usr/bin/ikectl --config /etc/ikectl/ikectl.toml nm-dispatch "$1" "$2"'
        assert "installed with the ikectl package" in text and path.stat().st_mode & 0o777 == 0o755
        assert str(PROJECT_ROOT) not in text and ".venv" not in text
    install = (PROJECT_ROOT / "debian/ikectl.install").read_text()
    assert "debian/extras/NetworkManager/dispatcher.d usr/lib/NetworkManager/" in install
    rules = (PROJECT_ROOT / "debian/rules").read_text()
    assert "buildtools.nm_hook --out $(EXTRAS)/NetworkManager" in rules and "--ikectl /usr/bin/ikectl" in rules


def test_every_file_the_debian_packages_install_comes_from_the_tree_or_the_build() -> None:
    built = {"debian/extras/completion/ikectl", "debian/extras/completion/enclave-ike",
             "debian/extras/NetworkManager/dispatcher.d",
             "debian/extras/man/ikectl.1", "debian/extras/man/enclave-ike.1"}
    for listing in [*PROJECT_ROOT.glob("debian/*.install"), *PROJECT_ROOT.glob("debian/*.manpages")]:
        for line in listing.read_text().splitlines():
            source = line.split()[0]
            assert source in built or (PROJECT_ROOT / source).exists(), f"{listing.name}: {source}"
    for unit in PROJECT_ROOT.glob("debian/*.service"):
        assert unit.resolve().parent == PROJECT_ROOT / "system", f"{unit.name}: one copy of each unit, in system/"
