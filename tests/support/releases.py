"""A released qdata, taken from git history and run next to this checkout's.

`materialize(commit, folder)` writes that commit's server and generated client
(`git archive <commit> server clients/python`) into folder; `Release.run` and `Release.serve`
run its `python -m qdata_server ...` as a subprocess with PYTHONPATH naming that tree's server/
and clients/python/ before anything else, so its code is what runs. The venv's third-party
packages are shared (a release needs nothing the venv lacks; the pins only move forward).
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.support.processes import ServerProcess

# The last release: the commit that was main's last landed state when the current release cycle
# began. Bump it at each release to the release's commit (the last landed main), so that the
# rolling-update test runs the release that production runs next to the one being shipped.
PREVIOUS_RELEASE = "879b048c2a090efdf002533f19e48e71267ddb6c"

REPOSITORY = Path(__file__).resolve().parents[2]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, check=False)


def unavailable(commit: str) -> str | None:
    """Why commit cannot be taken from this checkout's history (None: it can)."""
    try:
        inside = _git("rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        return "git is not installed"
    if inside.returncode != 0:
        return f"{REPOSITORY} is not a git checkout (a source tarball?)"
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
        return "the checkout is a shallow clone (git fetch --unshallow brings the history back)"
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return f"commit {commit} is not in this checkout's history"
    if _git("merge-base", "--is-ancestor", commit, "HEAD").returncode != 0:
        return f"commit {commit} is not an ancestor of HEAD (bump PREVIOUS_RELEASE in tests/support/releases.py)"
    return None


@dataclasses.dataclass(frozen=True)
class Release:
    """A commit's server and generated client, unpacked in root."""

    commit: str
    root: Path

    def env(self) -> dict[str, str]:
        """PYTHONPATH naming this release's server and client before this checkout's."""
        paths = [str(self.root / "server"), str(self.root / "clients" / "python")]
        inherited = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join([*paths, inherited] if inherited else paths)}

    def run(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """`python -m qdata_server <args>` of this release (env: its QDATA_* settings)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("QDATA_", "DATABASE_URL"))}
        full_env.update({**env, **self.env()})
        return subprocess.run(
            [sys.executable, "-m", "qdata_server", *args], env=full_env, capture_output=True, text=True, check=False
        )

    def python(self, code: str) -> str:
        """What `python -c code` prints when run with this release first on the path."""
        done = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **self.env()}, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def serve(self, env: dict[str, str], log_path: Path) -> ServerProcess:
        """This release's `python -m qdata_server serve` (see ServerProcess)."""
        return ServerProcess({**env, **self.env()}, log_path)


def materialize(commit: str, folder: Path) -> Release:
    """commit's server/ and clients/python/ unpacked into folder (once: an unpacked folder is reused)."""
    root = folder / commit
    if not (root / "server" / "qdata_server" / "__main__.py").exists():
        archive = _git("archive", "--format=tar", commit, "server", "clients/python")
        assert archive.returncode == 0, archive.stderr.decode(errors="replace")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(root, filter="data")
    return Release(commit, root)
