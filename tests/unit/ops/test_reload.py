"""porthole/ops/reload.py: the RulesWatcher notices an edited rules file (also a Kubernetes
ConfigMap's symlink swap) once, when its interval is due, on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from porthole.ops.reload import RulesWatcher

pytestmark = pytest.mark.timeout(60)


def configmap_layout(base: Path, text: str) -> Path:
    """A Kubernetes ConfigMap volume: rules.json -> ..data/rules.json, ..data -> ..v1/."""
    (base / "..v1").mkdir()
    (base / "..v1" / "rules.json").write_text(text)
    (base / "..data").symlink_to("..v1")
    (base / "rules.json").symlink_to("..data/rules.json")
    return base / "rules.json"


def configmap_update(base: Path, version: str, text: str) -> None:
    """What the kubelet does: a new timestamped directory, then ..data swapped to it atomically."""
    (base / version).mkdir()
    (base / version / "rules.json").write_text(text)
    (base / "..data_tmp").symlink_to(version)
    (base / "..data_tmp").rename(base / "..data")


def watch(env, path, interval=5.0):
    changes = []
    watcher = RulesWatcher(env.loop, path, interval, lambda: changes.append(env.clock.now), env.log)
    watcher.start()
    return watcher, changes


def tick(env, seconds):
    env.clock.now += seconds
    env.run()


def test_rules_watcher_reports_an_edit_once_and_only_when_due(env):
    path = Path(env.dir) / "rules.json"
    path.write_text("one")
    watcher, changes = watch(env, path)
    tick(env, 5)
    assert changes == []
    path.write_text("one, longer")  # size changes: no need for the mtime to move
    tick(env, 4.9)
    assert changes == []  # not due yet
    tick(env, 0.1)
    assert changes == [env.clock.now]
    tick(env, 5)
    tick(env, 5)
    assert len(changes) == 1  # Rule 1: reported once


def test_rules_watcher_sees_a_configmap_symlink_swap(env):
    """Same size, and a mtime that may well be equal: the identity (st_dev, st_ino) differs."""
    base = Path(env.dir)
    path = configmap_layout(base, '{"a": 1}')
    watcher, changes = watch(env, path)
    configmap_update(base, "..v2", '{"a": 2}')
    tick(env, 5)
    assert changes == [env.clock.now]
    tick(env, 5)
    assert len(changes) == 1


def test_rules_watcher_missing_file_is_logged_once_and_its_return_is_a_change(env):
    path = Path(env.dir) / "rules.json"
    path.write_text("one")
    watcher, changes = watch(env, path)
    path.unlink()
    tick(env, 5)
    tick(env, 5)
    assert changes == []
    assert [e["event"] for e in env.log_events()].count("rules_missing") == 1
    path.write_text("one")
    tick(env, 5)
    assert len(changes) == 1


def test_rules_watcher_remember_and_stop(env):
    path = Path(env.dir) / "rules.json"
    path.write_text("one")
    watcher, changes = watch(env, path)
    path.write_text("two, after a SIGHUP")
    watcher.remember()  # Rule 3: the SIGHUP already reloaded this file
    tick(env, 5)
    assert changes == []
    path.write_text("three, not seen")
    watcher.stop()
    tick(env, 5)
    tick(env, 5)
    assert changes == []
