"""A private sshd on 127.0.0.1 for the --stdio tests: Debian's openssh-server with a temporary
host key and configuration, a test user (useradd) whose authorized_keys gives each key a forced
command, and the client side: a HOME with the keys, known_hosts and an ssh_config, and an `ssh`
first on PATH that uses them (ssh reads its configuration from the passwd entry's home, not
$HOME) and records each command line it was given.

    bed = SshTestbed(groups=[dockerd.sock_gid])          # sshd started, user created
    bed.add_key("cli", 'proxy.py --stdio --profile docker-cli ...')  # -> host alias "cli"
    bed.env()        # HOME, PATH for the docker CLI, the SDK (paramiko or the ssh binary)
    bed.url("cli")   # ssh://<user>@cli:<port>: the key comes from the ssh_config
    bed.ssh_commands()   # every command line the clients gave `ssh`
    bed.user_processes()  # the test user's processes (forced commands still running)
    bed.stop()       # sshd stopped, the user and its group removed

Nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

from support import _CLEAN_PATH, free_port, short_tmpdir, stage_proxy, REPO

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
FORCED_OPTIONS = "no-pty,no-port-forwarding,no-X11-forwarding,no-agent-forwarding"


def sshd_problem() -> Optional[str]:
    """Why the sshd tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "must run as root to start sshd and add a user"
    for exe in (SSHD, SSH, SSH_KEYGEN, "/usr/sbin/useradd"):
        if not os.access(exe, os.X_OK):
            return "%s not found (openssh-server, openssh-client, passwd)" % exe
    return None


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


class SshTestbed:
    """sshd on 127.0.0.1:<free port>, a user, keys with forced commands, a client HOME."""

    def __init__(self, groups: Sequence[int] = ()) -> None:
        self.dir = short_tmpdir("ph-ssh-", 0o755)
        self.user = "ph" + uuid.uuid4().hex[:8]
        self.groups_made: list[str] = []
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.keys: dict[str, Path] = {}
        self.commands: dict[str, str] = {}
        self.server = self.dir / "server"
        self.home = self.dir / "client"  # the client's HOME
        self.user_home = self.dir / "home"
        for d in (self.server, self.home / ".ssh", self.home / "bin", self.user_home):
            d.mkdir(parents=True)
        self.proxy_dir = self.dir / "proxy"  # proxy.py, porthole/, h11, readable by the user
        self.proxy_dir.mkdir()
        os.chmod(self.proxy_dir, 0o755)
        self.proxy_argv = stage_proxy(REPO / "proxy.py", self.proxy_dir)
        shutil.copy2(REPO / "rules.json", self.proxy_dir / "rules.json")
        os.chmod(self.proxy_dir / "rules.json", 0o644)
        try:
            self._add_user(groups)
            self._start_sshd()
        except BaseException:
            self.stop()
            raise

    # -- server side -------------------------------------------------------------------------------
    def _add_user(self, groups: Sequence[int]) -> None:
        names = []
        for gid in groups:
            try:
                names.append(_group_name(gid))
            except KeyError:  # the private daemon's socket group has no name: give it one
                name = "phg%d" % gid
                _run("groupadd", "-g", str(gid), name)
                self.groups_made.append(name)
                names.append(name)
        _run("useradd", "-M", "-d", str(self.user_home), "-s", "/bin/sh",
             *(["-G", ",".join(names)] if names else []), self.user)
        _run("usermod", "-p", "*", self.user)  # "!" (locked) would make sshd refuse the key
        os.chown(self.user_home, _uid(self.user), -1)

    def _start_sshd(self) -> None:
        key = self.server / "host_ed25519"
        _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        (self.server / "authorized_keys").write_text("")
        config = self.server / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", "Port %d" % self.port, "HostKey %s" % key,
            "PidFile %s" % (self.server / "sshd.pid"), "AuthorizedKeysFile %s" % (self.server / "authorized_keys"),
            "AllowUsers %s" % self.user, "StrictModes no", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin no", "PermitUserEnvironment no",
            "X11Forwarding no", "AllowTcpForwarding no", "PrintMotd no", "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE", "",
        ]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
        self.log_path = self.server / "sshd.log"
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(self.log_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        host_key = (self.server / "host_ed25519.pub").read_text().split()
        (self.home / ".ssh" / "known_hosts").write_text("[127.0.0.1]:%d %s %s\n" % (self.port, *host_key[:2]))
        wrapper = self.home / "bin" / "ssh"
        wrapper.write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\nexec %s -F %s "$@"\n'
                           % (shlex.quote(str(self.home / "ssh-commands.log")), SSH,
                              shlex.quote(str(self.home / ".ssh" / "config"))))
        os.chmod(wrapper, 0o755)
        deadline = time.monotonic() + 20
        while "Server listening" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sshd did not start:\n%s\n%s" % (self.log(), self.proc.stderr.read()
                                   if self.proc.poll() is not None else ""))
            time.sleep(0.05)

    def add_key(self, alias: str, command: str, options: str = FORCED_OPTIONS) -> None:
        """A new key whose authorized_keys line forces `command` (the staged proxy.py's path
        replaces a leading "proxy.py"); reached with the host alias `alias`."""
        key = self.home / ".ssh" / ("id_" + alias)
        _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", alias, "-f", str(key))
        if command.startswith("proxy.py"):
            command = " ".join(shlex.quote(a) for a in self.proxy_argv) + command[len("proxy.py"):]
        self.keys[alias], self.commands[alias] = key, command
        public = (key.with_suffix(".pub")).read_text().strip()
        with open(self.server / "authorized_keys", "a") as f:
            f.write('command="%s",%s %s\n' % (command.replace('"', '\\"'), options, public))
        with open(self.home / ".ssh" / "config", "a") as f:
            f.write("Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n"
                    "  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile %s\n"
                    "  BatchMode yes\n  LogLevel ERROR\n\n"
                    % (alias, self.port, self.user, key, self.home / ".ssh" / "known_hosts"))

    # -- client side -------------------------------------------------------------------------------
    def url(self, alias: str) -> str:
        """The docker SDK's paramiko transport adds port 22 to a URL without one, ignoring the
        ssh_config's: the port is always given."""
        return "ssh://%s@%s:%d" % (self.user, alias, self.port)

    def env(self, extra: Optional[dict] = None) -> dict:
        env = {"HOME": str(self.home), "PATH": "%s:%s" % (self.home / "bin", _CLEAN_PATH), "LANG": "C.UTF-8",
               "DOCKER_CONFIG": str(self.home / ".docker"), "DOCKER_CLI_HINTS": "false"}
        env.update(extra or {})
        return env

    def ssh_commands(self) -> list:
        try:
            return (self.home / "ssh-commands.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def user_processes(self) -> dict:
        """The test user's processes now, pid: command line (forced commands still running)."""
        uid, found = _uid(self.user), {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat("/proc/" + pid).st_uid == uid:
                    found[int(pid)] = Path("/proc/%s/cmdline" % pid).read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
        return found

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (AttributeError, FileNotFoundError):
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        subprocess.run(["userdel", "-f", self.user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in self.groups_made:
            subprocess.run(["groupdel", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.groups_made = []


def _group_name(gid: int) -> str:
    import grp
    return grp.getgrgid(gid).gr_name


def _uid(user: str) -> int:
    import pwd
    return pwd.getpwnam(user).pw_uid
