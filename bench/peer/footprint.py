"""Footprint of each side: disk, distributions, import time, memory after import.

- The agent: a fresh venv with only ``pip install <project>`` (no extras, not
  editable), kept under ``var/peer/agent-<hash>/`` and made again when anything that
  goes into the wheel changes (the hash covers pyproject.toml, agent/ and sim/).
- The peer: its own venv (tbgw.ensure_venv), as the benchmark runs it.
- The baseline for both: a bare venv made the same way (``python -m venv``: pip and
  setuptools), in the scratch directory.

Disk: bytes allocated (st_blocks, as du counts) under site-packages, minus the bare
venv's; "package itself" is what the distribution's RECORD lists (its modules, their
byte code, its dist-info), the rest is its dependencies. Distributions: those in the
venv and not in the bare one, less the package itself. Import time: wall time of a
fresh ``python -I -c "import <modules>"`` (interpreter start included; the bare
interpreter's ``python -I -c pass`` is given beside it), and the import alone timed
inside the process; median of ``repeat`` runs. RSS: VmRSS right after the import.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.peer import tbgw

ROOT = Path(__file__).resolve().parents[2]
AGENT_MODULES = ("agent.runtime",)
PEER_MODULES = (tbgw.MAIN_MODULE, tbgw.MODBUS_MODULE)
PROBE = """
import sys, time, json
t = time.perf_counter()
for name in sys.argv[1:]:
    __import__(name)
dt = time.perf_counter() - t
rss = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:'))
print(json.dumps({"import_s": dt, "rss_kb": rss}))
"""
LIST = ("import importlib.metadata as m, json; print(json.dumps({"
        "d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")


@dataclass(frozen=True)
class Footprint:
    total_bytes: int  # site-packages minus the bare venv's
    package_bytes: int
    package_parts: dict[str, int]  # the package's bytes by top-level folder
    deps: list[str]  # "name version"
    wall_s: list[float]  # python -I -c "import ..." (whole process)
    import_s: list[float]  # the imports alone
    rss_kb: list[int]
    bare_wall_s: list[float]
    bare_rss_kb: int

    @property
    def deps_bytes(self) -> int:
        return self.total_bytes - self.package_bytes


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def _du(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_blocks * 512
    return total


def _run(args: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}); see {log}")


def _venv(where: Path, log: Path) -> Path:
    _run([tbgw.base_python(), "-m", "venv", str(where)], log)
    return (where / "bin" / "python").absolute()  # absolute: probes run from /


def _source_hash() -> str:
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    for top in ("agent", "sim"):
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(ROOT)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:12]


def agent_venv(log: Path) -> Path:
    """A venv with only the project installed from its source, cached by its hash."""
    venv = ROOT / "var" / "peer" / f"agent-{_source_hash()}" / "venv"
    stamp = venv / ".bench-installed"
    if stamp.exists():
        return venv
    for old in (ROOT / "var" / "peer").glob("agent-*"):
        shutil.rmtree(old)
    venv.parent.mkdir(parents=True, exist_ok=True)
    py = _venv(venv, log)
    # A copy of the source: a build in the tree would leave build/ and egg-info behind.
    src = venv.parent / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "keys", "build", "*.egg-info", "__pycache__", ".*_cache", "tests",
        "bench"))
    _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir",
          str(src)], log)
    shutil.rmtree(src)
    stamp.write_text("ok")
    return venv


def _dists(py: Path) -> dict[str, str]:
    """{distribution: version} of the venv of ``py``."""
    out = subprocess.run([str(py), "-I", "-c", LIST], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


def _record_bytes(site: Path, dist: str) -> dict[str, int]:
    """Bytes allocated for the files a distribution's RECORD lists (inside
    site-packages), by top-level folder."""
    info = next(p for p in site.glob("*.dist-info")
                if p.name.lower().replace("_", "-").startswith(dist + "-"))
    out: dict[str, int] = {}
    for line in (info / "RECORD").read_text().splitlines():
        rel = line.rsplit(",", 2)[0]
        path = (site / rel).resolve()
        if path.is_file() and site.resolve() in path.parents:
            top = rel.split("/", 1)[0]
            out[top] = out.get(top, 0) + path.stat().st_blocks * 512
    return out


def _probe(py: Path, modules: tuple[str, ...], repeat: int) -> tuple[list[float], list[float],
                                                                     list[int]]:
    walls, imports, rss = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run([str(py), "-I", "-c", PROBE, *modules], capture_output=True,
                             text=True, check=True, cwd="/")
        walls.append(time.perf_counter() - t)
        got = json.loads(out.stdout)
        imports.append(float(got["import_s"]))
        rss.append(int(got["rss_kb"]))
    return walls, imports, rss


def measure(scratch: Path, repeat: int, log: Path) -> dict[str, Footprint]:
    bare_py = _venv(scratch / "bare-venv", log)
    bare_site = _site(scratch / "bare-venv")
    bare_bytes, bare_dists = _du(bare_site), set(_dists(bare_py))
    bare_wall, _, bare_rss = _probe(bare_py, (), repeat)
    out = {}
    for name, venv, dist, modules in (
            ("agent", agent_venv(log), "meter-agent", AGENT_MODULES),
            ("peer", tbgw.venv_dir(), "thingsboard-gateway", PEER_MODULES)):
        py = venv / "bin" / "python"
        site = _site(venv)
        walls, imports, rss = _probe(py, modules, repeat)
        dists = _dists(py)
        deps = sorted(f"{n} {v}" for n, v in dists.items() if n not in bare_dists and n != dist)
        parts = _record_bytes(site, dist)
        out[name] = Footprint(total_bytes=_du(site) - bare_bytes,
                              package_bytes=sum(parts.values()), package_parts=parts,
                              deps=deps,
                              wall_s=walls, import_s=imports, rss_kb=rss,
                              bare_wall_s=bare_wall, bare_rss_kb=int(statistics.median(bare_rss)))
    return out


if __name__ == "__main__":  # a look at the figures alone: python -m bench.peer.footprint
    import tempfile

    with tempfile.TemporaryDirectory(dir=ROOT / "var") as tmp:
        tbgw.ensure_venv(Path(tmp) / "install.log")
        for side, fp in measure(Path(tmp), 3, Path(tmp) / "log").items():
            print(side, fp.total_bytes, fp.package_bytes, len(fp.deps), fp.deps,
                  statistics.median(fp.wall_s), statistics.median(fp.import_s),
                  statistics.median(fp.rss_kb), file=sys.stdout)
