"""The files programs see and leave: the programs' own root (read-only bind mounts, a pivot_root, private tmpfs
folders, hidden paths), the state that tells whether a run touched a tmpfs, and the clean-up of what programs leave
where there is no root of their own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence

from qrl.execution.kernel import (
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    Kernel,
)

TMP_INODES = 4096  # files, folders and hard links together in each private tmpfs
_SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
              "/etc/group", "/etc/nsswitch.conf", "/etc/hosts")  # fmt: skip
_DEVICES = ("null", "zero", "full", "random", "urandom")
_STAGE = "/sys"  # where the programs' root is built: nothing under it is a source of that root
_STATVFS_TO_MS = [  # a mount's flags that a read-only remount must keep (a user namespace locks them)
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
]


class ProgramRoot:
    """Builds the programs' root, as bubblewrap would: a tmpfs holding read-only bind mounts of the system's
    libraries and programs, the interpreter with its standard library and installed packages, and the folders the
    caller exposes; a few /etc files and device nodes; a fresh proc; private /tmp and /dev/shm. The server pivots
    into it, so nothing else of the host (the project, home folders, caches, data, host sockets) exists for any
    program. ``hide`` covers files or folders inside the visible paths (problem files, say) with empty ones.

    ``own_proc``: a proc of the server's pid namespace; ``mqueue``: the IPC namespace's message queues. Without a
    mount namespace nothing is built and ``tmpfs_state`` stays empty."""

    def __init__(self, kernel: Kernel, tmp_size: int, uid: int | None, own_proc: bool, mqueue: bool):
        self.k, self.tmp_size, self.uid, self.own_proc, self.mqueue = kernel, tmp_size, uid, own_proc, mqueue
        self.host_mounts: list[str] = []
        self.tmp_binds: list[tuple[str, str]] = []  # (stash, path under /tmp) bound again into every fresh /tmp
        self.tmpfs_state: dict[str, tuple] = {}

    def build(self, readable: Sequence[str], hide: Sequence[str]) -> None:
        k, new = self.k, _STAGE
        os.umask(0o022)
        k.mount(None, "/", None, MS_REC | MS_PRIVATE)
        self.host_mounts = _mount_points()
        k.mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
        for folder in _SYSTEM_FOLDERS:
            if os.path.islink(folder):
                os.symlink(os.readlink(folder), new + folder)
        paths = [f for f in _SYSTEM_FOLDERS if os.path.isdir(f) and not os.path.islink(f)]
        for path in _outermost([*paths, *(os.path.realpath(p) for p in readable if os.path.isdir(p))]):
            if path == "/tmp" or path.startswith("/tmp/"):
                stash = f"/.qrl-keep/{len(self.tmp_binds)}"
                self.bind(path, new + stash)
                self.tmp_binds.append((stash, path))
            else:
                self.bind(path, new + path)
        for path in _ETC_FILES:
            if os.path.exists(path):
                self.bind(path, new + path)
        self._devices(new)
        for path in hide:
            self._hide(new, os.path.realpath(path))
        for folder in ("/tmp", "/proc"):
            os.mkdir(new + folder)
        if self.own_proc:  # a proc of its own: pids as this namespace numbers them
            k.mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            k.mount("/proc", new + "/proc", None, MS_BIND | MS_REC)
        if self.mqueue:  # the namespace's POSIX message queues, for the clean-up to see
            os.mkdir(new + "/dev/mqueue")
            k.mount("mqueue", new + "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chdir(new)
        k.pivot_root(".", ".")
        k.umount(".")  # the old root, stacked under the new one: detached, it is gone for good
        os.chdir("/")
        k.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        self.fresh_tmpfs("/tmp")
        self.fresh_tmpfs("/dev/shm")

    def fresh_tmpfs(self, folder: str) -> None:
        """A new, empty tmpfs on ``folder`` (the old one detached): nothing a program did there survives it, neither
        files, nor modes, nor a tree too deep to remove. Bounded in bytes and in inodes (hard links count too)."""
        k = self.k
        if folder in self.tmpfs_state:
            k.umount(folder)
        owner = f",uid={self.uid},gid={self.uid}" if self.uid is not None else ""
        k.mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV,
                f"size={self.tmp_size},nr_inodes={TMP_INODES},mode=0700{owner}")  # fmt: skip
        if folder == "/tmp":
            for stash, path in self.tmp_binds:
                _make_mount_point(path, is_dir=True)
                k.mount(stash, path, None, MS_BIND | MS_REC)
                k.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        self.tmpfs_state[folder] = _tmpfs_state(folder)

    def renew_touched_tmpfs(self) -> None:
        """After a run: /tmp and /dev/shm untouched (the usual case) are kept; otherwise replaced, never wiped."""
        for folder in ("/tmp", "/dev/shm"):
            if _tmpfs_state(folder) != self.tmpfs_state[folder]:
                self.fresh_tmpfs(folder)

    def tmpfs_growth(self) -> int:
        """Bytes the private /tmp and /dev/shm hold beyond what they held when the run began (none without them)."""
        grown = 0
        for folder, state in self.tmpfs_state.items():
            fs = os.statvfs(folder)
            grown += max(0, fs.f_blocks - fs.f_bfree - state[6]) * fs.f_frsize
        return grown

    def bind(self, source: str, target: str) -> None:
        """A read-only bind mount, submounts included (each made read-only too, keeping the flags a user namespace
        locks)."""
        _make_mount_point(target, os.path.isdir(source))
        self.k.mount(source, target, None, MS_BIND | MS_REC)
        inner = [m for m in self.host_mounts if m.startswith(source.rstrip("/") + "/")]
        for mount_source in [source, *inner]:
            flags = os.statvfs(mount_source).f_flag
            keep = sum(ms for st, ms in _STATVFS_TO_MS if flags & st)
            where = target + mount_source[len(source):]
            try:
                self.k.mount(None, where, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)
            except OSError:
                if mount_source == source:
                    raise

    def _devices(self, new: str) -> None:
        os.makedirs(new + "/dev/shm", 0o755)
        for name in _DEVICES:
            _make_mount_point(f"{new}/dev/{name}", is_dir=False)
            self.k.mount(f"/dev/{name}", f"{new}/dev/{name}", None, MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):  # fmt: skip
            os.symlink(target, f"{new}/dev/{name}")

    def _hide(self, new: str, path: str) -> None:
        for stash, source in self.tmp_binds:  # under /tmp: inside its stash, bound with it into each /tmp
            if path.startswith(source + "/"):
                path = stash + path[len(source):]
        if not os.path.lexists(new + path):
            return
        if os.path.isdir(new + path) and not os.path.islink(new + path):
            self.k.mount("tmpfs", new + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0555")
        else:
            self.k.mount("/dev/null", new + path, None, MS_BIND)


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths, without those inside another one of them."""
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in paths}):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _make_mount_point(path: str, is_dir: bool) -> None:
    os.makedirs(path if is_dir else os.path.dirname(path), 0o755, exist_ok=True)
    if not is_dir and not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def python_paths() -> list[str]:
    """The interpreter, its standard library and its installed packages: what a program must be able to read."""
    import site
    import sysconfig

    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values(),
             *site.getsitepackages()}  # fmt: skip
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and user in sys.path:
        paths.add(user)
    return sorted(p for p in paths if p and os.path.isdir(p))


def _tmpfs_state(folder: str) -> tuple:
    """What a program can change of a tmpfs without leaving a file in it: equal before and after, no new one."""
    st, fs = os.stat(folder), os.statvfs(folder)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, fs.f_files - fs.f_ffree,
            fs.f_blocks - fs.f_bfree, tuple(sorted(os.listxattr(folder))))  # fmt: skip


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]


def closed_ancestors(path: str) -> list[tuple[str, str]]:
    """(folder, next entry) for each folder on the way to ``path`` that others may not pass through."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    found = []
    for depth in range(1, len(parts)):
        folder = os.sep + os.path.join(*parts[:depth])
        if not os.stat(folder).st_mode & 0o001:
            found.append((folder, parts[depth]))
    return found


def remove_tree(path: str) -> None:
    """Remove a folder however deep it goes (``shutil.rmtree`` recurses, and gives up on a deep enough chain);
    raise if anything is left."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False, capture_output=True)
    if os.path.lexists(path):
        raise OSError(f"could not remove {path}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def remove_owned_by(uid: int, folders: Sequence[str]) -> None:
    """Remove what ``uid`` (a program uid of its own) left at the top of ``folders``; raise if a folder stays."""
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                owned = entry.stat(follow_symlinks=False).st_uid == uid
            except OSError:
                continue  # gone meanwhile
            if owned:
                _remove(entry.path)  # a failure retires the server
