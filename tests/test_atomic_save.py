"""Atomic saves under SIGKILL, concurrent readers, and damaged or unwritable fingerprint files."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ipguard_jax as ipg

# A process that imports the library once, then forks a fresh child for every save, so that
# each save (and each kill) costs a fork instead of a Python start. Nothing in it touches JAX
# or orbax before forking, so the children start with no threads of theirs.
SERVER = textwrap.dedent('''
    import os, sys, traceback
    import numpy as np
    import ipguard_jax as ipg
    from ipguard_jax import io as fio

    fio.SCRYPT_N = 2 ** 12

    def make(seed, n):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n)
        return ipg.Fingerprints(
            x=rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32), labels=labels,
            i=(labels + 1) % 10, j=labels, loss=rng.uniform(0, 1, n),
            converged=np.ones(n, bool), steps=rng.integers(1, 99, n), source=np.arange(n),
            metadata={"config": {"seed": seed}, "classifier": {"num_classes": 10}})

    sets = [make(0, 400), make(1, 250)]
    print("ready", *[s.digest() for s in sets], flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] in ("save", "loop"):
            which, target, rounds = int(cmd[1]), cmd[2], int(cmd[3])
            pid = os.fork()
            if pid == 0:
                try:
                    for r in range(rounds):
                        fp = sets[(which + r) % 2]
                        if target.endswith(".sealed"):
                            ipg.save(fp, target, overwrite=True, passphrase="pw")
                        else:
                            ipg.save(fp, target, overwrite=True)
                    os._exit(0)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
            print(pid, flush=True)
        elif cmd[0] == "wait":
            print(os.waitpid(int(cmd[1]), 0)[1], flush=True)
''')


class SaveServer:
    def __init__(self, tmp_path: Path):
        self.stderr = open(tmp_path / "server.stderr", "w+")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     cwd=tmp_path)
        ready = self.proc.stdout.readline().split()
        assert ready and ready[0] == "ready", self.errors()
        self.digests = ready[1:]

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def ask(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, self.errors()
        return int(answer)

    def start(self, which: int, target: Path, rounds: int = 1) -> int:
        return self.ask(f"save {which} {target} {rounds}")

    def wait(self, pid: int) -> int:
        return self.ask(f"wait {pid}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.stderr.close()


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


@pytest.fixture
def server(tmp_path):
    s = SaveServer(tmp_path)
    yield s
    s.close()


def _content(path: Path, **kwargs) -> str:
    return ipg.load(path, **kwargs).digest()


@needs_fork
@pytest.mark.parametrize("sealed", [False, True], ids=["directory", "sealed"])
def test_sigkill_during_overwrite_leaves_old_or_new(server, tmp_path, sealed):
    target = tmp_path / ("fp.sealed" if sealed else "fp")
    kwargs = {"passphrase": "pw"} if sealed else {}
    digests = server.digests
    # Calibrate: how long an uninterrupted save takes, fork to exit.
    durations = []
    for which in (0, 1, 0):
        start = time.monotonic()
        assert server.wait(server.start(which, target)) == 0, server.errors()
        durations.append(time.monotonic() - start)
    current = 0
    assert _content(target, **kwargs) == digests[current]
    span = 1.1 * min(durations)  # kills land anywhere from the fork to about the end
    rng = random.Random(1234)
    trials = 24 if not sealed else 10
    interrupted = kept_old = 0
    for _ in range(trials):
        new = 1 - current
        pid = server.start(new, target)
        time.sleep(rng.uniform(0.0, span))
        os.kill(pid, signal.SIGKILL)
        status = server.wait(pid)
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            interrupted += 1
        else:
            assert os.WEXITSTATUS(status) == 0, server.errors()
        got = _content(target, **kwargs)  # never an exception: always a complete set
        assert got in (digests[current], digests[new]), "a mixture of the two sets"
        if got == digests[current]:
            assert os.WIFSIGNALED(status)  # a finished save must have switched
            kept_old += 1
        current = digests.index(got)
    # the kills must mostly land inside a save for the test to mean anything
    assert interrupted >= trials // 3, (interrupted, trials, durations)
    # and the interrupted saves still leave a path a new save can replace
    assert server.wait(server.start(1 - current, target)) == 0, server.errors()
    assert _content(target, **kwargs) == digests[1 - current]
    # which also removes what the killed saves left behind
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    if not sealed:
        names = sorted(os.listdir(target))
        assert len(names) == 2 and names[0] == "CURRENT" and names[1].startswith("v-"), names
    print(f"{trials} kills, {interrupted} mid-save, {kept_old} kept the old set")


@needs_fork
def test_concurrent_reader_sees_old_or_new(server, tmp_path):
    target = tmp_path / "fp"
    assert server.wait(server.start(0, target)) == 0, server.errors()
    pid = server.start(1, target, rounds=12)  # 12 overwrites in a row
    loads = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert _content(target) in server.digests
        loads += 1
        if _finished(pid):  # the writer is the server's child: look it up in /proc
            break
    assert server.wait(pid) == 0, server.errors()
    assert loads >= 3


def _finished(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="needs flock (POSIX)")


@needs_flock
def test_leftovers_of_killed_saves_are_removed_but_not_live_ones(tmp_path, monkeypatch):
    import fcntl

    from ipguard_jax import io as fio

    pytest.importorskip("cryptography")
    monkeypatch.setattr(fio, "SCRYPT_N", 2 ** 10)
    fp = _fingerprints()
    path = ipg.save(fp, tmp_path / "fp")
    # What killed saves leave: a version that never went live, a temporary CURRENT, a staging
    # directory of a new set, a temporary sealed file; and the same kinds held by live saves.
    dead = {path / "v-dead", path / ".CURRENT.0a.tmp", tmp_path / ".new.0b.partial",
            tmp_path / ".s.sealed.0c.tmp"}
    live = {path / "v-live", tmp_path / ".new.1b.partial", tmp_path / ".s.sealed.1c.tmp"}
    other = {tmp_path / ".new2.0d.partial", tmp_path / ".news.0e.tmp"}  # other paths' files
    fds = []
    try:
        for item in dead | live | other:
            if item.suffix == ".tmp":
                item.write_bytes(b"half")
            else:
                item.mkdir()
                (item / "part").write_bytes(b"half")
            if item in live:
                fds.append(os.open(item, os.O_RDONLY))
                fcntl.flock(fds[-1], fcntl.LOCK_EX)
        ipg.save(fp[:5], path, overwrite=True)
        ipg.save(fp, tmp_path / "new")
        ipg.save(fp, tmp_path / "s.sealed", passphrase="pw")
    finally:
        for fd in fds:
            os.close(fd)
    assert not [p for p in dead if p.exists()]
    assert all(p.exists() for p in live | other)
    assert len(ipg.load(path)) == 5 and len(ipg.load(tmp_path / "new")) == len(fp)
    assert ipg.load(tmp_path / "s.sealed", passphrase="pw").digest() == fp.digest()
    # the live version of a set is never taken for a leftover
    assert sorted(os.listdir(path)) == sorted(["CURRENT", "v-live",
                                               (path / "CURRENT").read_text()])


# -- damaged, odd or unwritable fingerprint files ------------------------------------------------

def _fingerprints(n=30):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, n)
    return ipg.Fingerprints(x=rng.uniform(0, 1, (n, 5)).astype(np.float32), labels=labels,
                            i=(labels + 1) % 4, j=labels, loss=np.zeros(n),
                            converged=np.ones(n, bool), steps=np.ones(n, np.int32),
                            source=np.arange(n), metadata={"classifier": {"num_classes": 4}})


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_every_flipped_byte_in_a_file_is_caught_or_harmless(tmp_path):
    """A byte flipped anywhere: load raises FingerprintFileError or returns the same set."""
    fp = _fingerprints()
    path = ipg.save(fp, tmp_path / "fp")
    for victim in _files(path):
        data = victim.read_bytes()
        for pos in sorted({0, len(data) // 3, len(data) // 2, len(data) - 1}):
            bad = bytearray(data)
            bad[pos] ^= 0x5A
            victim.write_bytes(bytes(bad))
            try:
                got = ipg.load(path)
            except ipg.FingerprintFileError:
                pass
            else:  # e.g. a byte of orbax's own bookkeeping that does not change the content
                assert got.digest() == fp.digest(), f"{victim.relative_to(path)} byte {pos}"
            victim.write_bytes(data)
    assert ipg.load(path).digest() == fp.digest()


def test_truncated_files_are_caught(tmp_path):
    fp = _fingerprints()
    path = ipg.save(fp, tmp_path / "fp")
    for victim in _files(path):
        data = victim.read_bytes()
        for keep in sorted({0, len(data) // 2, max(len(data) - 1, 0)}):
            victim.write_bytes(data[:keep])
            try:
                got = ipg.load(path)
            except ipg.FingerprintFileError as e:
                assert str(path) in str(e)
            else:
                assert got.digest() == fp.digest(), f"{victim.relative_to(path)} cut to {keep}"
            victim.write_bytes(data)


def test_missing_parts_are_named(tmp_path):
    fp = _fingerprints()
    path = ipg.save(fp, tmp_path / "fp")
    for victim in _files(path):
        data = victim.read_bytes()
        victim.unlink()
        try:
            got = ipg.load(path)
        except ipg.FingerprintFileError as e:
            assert "missing" in str(e) or "cannot be read" in str(e), str(e)
        else:
            assert got.digest() == fp.digest()
        victim.write_bytes(data)
    assert ipg.load(path).digest() == fp.digest()


def test_newer_format_and_odd_manifests(tmp_path):
    path = ipg.save(_fingerprints(), tmp_path / "fp")
    manifest_path = path / (path / "CURRENT").read_text() / "fingerprints.json"
    original = json.loads(manifest_path.read_text())
    cases = [
        (dict(original, format_version=2), "format version 2.*upgrade ipguard_jax"),
        (dict(original, format_version="1"), "no valid format_version"),
        (dict(original, format_version=True), "no valid format_version"),
        (dict(original, arrays=[1, 2]), "lists arrays"),
        (dict(original, arrays={k: 5 for k in original["arrays"]}), "not objects"),
        (dict(original, metadata=[1]), "metadata is not an object"),
        ([1, 2, 3], "not an ipguard_jax.fingerprints manifest"),
    ]
    for manifest, match in cases:
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(ipg.FingerprintFileError, match=match):
            ipg.load(path)
    (path / "CURRENT").write_text("../elsewhere")
    with pytest.raises(ipg.FingerprintFileError, match="named by CURRENT is missing"):
        ipg.load(path)
    (path / "CURRENT").write_bytes(b"\xff\xfe")
    with pytest.raises(ipg.FingerprintFileError, match="CURRENT file is missing or unreadable"):
        ipg.load(path)


def test_consistent_but_invalid_content_is_refused(tmp_path):
    """A file whose sha256 matches but whose labels break the owner's class count."""
    from ipguard_jax import io as fio
    from ipguard_jax.fingerprints import content_digest

    path = ipg.save(_fingerprints(), tmp_path / "fp")
    manifest_path = path / (path / "CURRENT").read_text() / "fingerprints.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metadata"]["classifier"]["num_classes"] = 2
    arrays = fio.load(path).arrays()
    manifest["sha256"] = content_digest(arrays, manifest["metadata"])
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ipg.FingerprintFileError, match=r"not a valid fingerprint set.*labels"):
        ipg.load(path)


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_bytes(b"\x00" * 64)
    with pytest.raises(ipg.FingerprintFileError, match="is a file, not a fingerprint directory"):
        ipg.load(tmp_path / "afile")
    with pytest.raises(ipg.FingerprintFileError, match="not a fingerprint directory"):
        ipg.save(_fingerprints(), tmp_path / "afile", overwrite=True)
    with pytest.raises(FileNotFoundError, match="parent directory"):
        ipg.save(_fingerprints(), tmp_path / "afile" / "fp")
    assert (tmp_path / "afile").read_bytes() == b"\x00" * 64


def _chmod_is_enforced(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o500)
    try:
        (probe / "x").write_text("x")
    except PermissionError:
        return True
    else:
        return False  # root (or a capability) writes anyway
    finally:
        probe.chmod(0o700)
        shutil.rmtree(probe)


# Saves into a read-only location must fail with a clear PermissionError and leave what is
# there readable. Run in-process where file modes bind, or as root inside a private mount
# namespace over a read-only bind mount.
READ_ONLY_CHECK = textwrap.dedent('''
    import sys
    import numpy as np
    import ipguard_jax as ipg
    from ipguard_jax import io as fio

    fio.SCRYPT_N = 2 ** 10
    root = sys.argv[1]
    fp = ipg.load(root + "/fp")
    calls = {
        "new directory": lambda: ipg.save(fp, root + "/other"),
        "overwrite directory": lambda: ipg.save(fp[:3], root + "/fp", overwrite=True),
        "new sealed": lambda: ipg.save(fp, root + "/other.sealed", passphrase="pw"),
        "overwrite sealed": lambda: ipg.save(fp, root + "/fp.sealed", overwrite=True,
                                             passphrase="pw"),
    }
    for name, call in calls.items():
        try:
            call()
        except PermissionError as e:
            assert "cannot write the fingerprint file" in str(e), str(e)
            print(name, "refused:", e)
        else:
            raise SystemExit(name + ": no error")
    assert len(ipg.load(root + "/fp")) == len(fp)
    assert ipg.load(root + "/fp.sealed", passphrase="pw").digest() == fp.digest()
    print("READ-ONLY OK")
''')


def test_read_only_location(tmp_path):
    pytest.importorskip("cryptography")
    from ipguard_jax import io as fio

    root = tmp_path / "ro"
    root.mkdir()
    fp = _fingerprints()
    ipg.save(fp, root / "fp")
    fio.SCRYPT_N, old_n = 2 ** 10, fio.SCRYPT_N
    try:
        ipg.save(fp, root / "fp.sealed", passphrase="pw")
    finally:
        fio.SCRYPT_N = old_n
    if _chmod_is_enforced(tmp_path):
        for p in (root, root / "fp"):
            p.chmod(0o500)
        try:
            result = subprocess.run([sys.executable, "-c", READ_ONLY_CHECK, str(root)],
                                    capture_output=True, text=True, timeout=120)
        finally:
            for p in (root, root / "fp"):
                p.chmod(0o700)
    else:  # root ignores file modes: a read-only bind mount in a private namespace binds it
        if shutil.which("unshare") is None or subprocess.run(
                ["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("file modes do not bind this user and no mount namespace is allowed")
        script = tmp_path / "check.py"
        script.write_text(READ_ONLY_CHECK)
        command = (f'mount --bind -o ro "{root}" "{root}" && mount -o remount,ro,bind "{root}" '
                   f'&& exec "{sys.executable}" "{script}" "{root}"')
        result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True,
                                text=True, timeout=120)
    assert result.returncode == 0 and "READ-ONLY OK" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-2000:])
    assert ipg.load(root / "fp").digest() == fp.digest()
