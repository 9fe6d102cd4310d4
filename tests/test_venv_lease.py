"""The venv manager's lease against delete: a delete either finds the env in use or ends
before the lease loads it; it never deletes an env a lease has handed out."""

from __future__ import annotations

import json
import threading

import pytest

from venv_manager.envs import EnvInUse, EnvNotFound, EnvStore

ENV_ID = "a" * 64


def _env(store: EnvStore) -> None:
    """An env as a build leaves it (its venv is not needed to lease or delete it)."""
    path = store.root / "envs" / ENV_ID
    path.mkdir()
    (path / "spec.json").write_text(json.dumps(
        {"python_version": "3.11", "created_at": "2026-11-29T00:00:00+00:00", "spec": {}}))
    (path / "lock.txt").write_text("six==1.16.0\n")


def test_a_delete_racing_a_lease_waits_and_finds_the_env_in_use(tmp_path, monkeypatch):
    store = EnvStore(tmp_path)
    _env(store)
    loaded, go, deleted = threading.Event(), threading.Event(), threading.Event()
    load = store._load

    def slow_load(env_id):  # the lease pauses between loading the env and counting it
        env = load(env_id)
        loaded.set()
        go.wait(5)
        return env

    monkeypatch.setattr(store, "_load", slow_load)
    outcome: dict[str, object] = {}

    def lease() -> None:
        with store.lease(ENV_ID):
            deleted.wait(5)  # held while the delete tries
            outcome["still_there"] = (store.root / "envs" / ENV_ID).is_dir()

    def delete() -> None:
        try:
            store.delete(ENV_ID)
            outcome["deleted"] = True
        except EnvInUse as e:
            outcome["deleted"] = e
        deleted.set()

    leaser = threading.Thread(target=lease)
    leaser.start()
    assert loaded.wait(5)
    deleter = threading.Thread(target=delete)
    deleter.start()
    deleter.join(0.5)  # it waits for the lease to have counted itself (it used to delete here)
    go.set()
    leaser.join(10), deleter.join(10)
    assert isinstance(outcome["deleted"], EnvInUse), outcome
    assert outcome["still_there"] is True


def test_a_lease_after_a_delete_finds_no_env(tmp_path):
    store = EnvStore(tmp_path)
    _env(store)
    store.delete(ENV_ID)
    with pytest.raises(EnvNotFound), store.lease(ENV_ID):
        pass
