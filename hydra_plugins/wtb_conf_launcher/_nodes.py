"""Jobs on the nodes of a Ray cluster: which node an actor goes to, an interpreter found or
built on that node (not a path the driver made), and the launch dir shipped to nodes that do
not share the driver's disk (`shared_disk: false`). docs/scale-out.md tells the story.

Imported with _ray, only when a batch needs Ray.

- A node's interpreters come from its **agent**: a detached actor per node (named
  `wtb-node-<node id>` in namespace `wtb`, no CPU), started the first time a job there needs
  one and kept as long as the node, in the node's own Python. It runs a planner's
  `NodeEnv.provide` once per key (concurrent asks wait for the first; a failure is kept for
  the sweep, so every job of a broken env fails at once with the same message).
- **Placement**: each actor is pinned (hard node affinity) to the alive node with the most
  free job slots, preferring one that has the job's interpreter already (the agents are
  asked once per sweep what they have). A job retried after its node was lost goes to a
  node that is alive (a lost node is never picked again).
- **Shipping** (`shared_disk: false`): the driver's launch dir goes to every actor as the
  job's Ray `working_dir` (zipped and uploaded once by `ray.init`, unpacked once per node,
  without data/, multirun/, outputs/, .wtb/, .git, venvs and what .gitignore / .rayignore
  name); the job runs with its `hydra.runtime.cwd` there and its job dir under the node's Ray
  temp dir (`<temp>/wtb-jobs/<node id>/<sweep dir>/<job>`): its files reach the driver
  through the store, which must be reachable from every node (checked at the sweep's start).
"""

from __future__ import annotations

import os
import threading
from collections import Counter, defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, open_dict, read_write
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

NAMESPACE = "wtb"
# what a shipped launch dir leaves out (gitignore patterns; "/x/" is x/ at its top only):
# the driver's store and job dirs, envs, git (Ray adds .git, venv, .venv, __pycache__ itself)
SHIP_EXCLUDES = ["/data/", "/multirun/", "/outputs/", "/.wtb/", ".git", ".venv", "venv",
                 "__pycache__", "*.pyc",
                 # secrets: the package is kept in the cluster's GCS and unpacked on every node
                 ".env", ".env.*", ".aws/", ".ssh/", ".netrc", ".pgpass", "*.pem", "*.key"]
JOBS_DIR = "wtb-jobs"  # under the node's Ray temp dir: the job dirs of shipped jobs


def ship(launch_dir: str) -> dict[str, Any]:
    """The job-level runtime_env that ships the launch dir (Ray takes a local working_dir only
    from ray.init: per actor it must be a URI)."""
    return {"working_dir": launch_dir, "excludes": SHIP_EXCLUDES}


@ray.remote(num_cpus=0, max_concurrency=32)
class NodeAgent:
    """One per node: interpreters for the launcher's actors there, found or built once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: dict[str, tuple[threading.Lock, list[Any]]] = {}

    def provide(self, key: str, provide: Any,
                sweep: str) -> tuple[str, list[str], dict[str, str]]:
        """`sweep`: the asking driver's job id; a failure is kept for that sweep only (the
        next one tries again: the index may be back)."""
        with self.lock:
            entry = self.found.setdefault(key, (threading.Lock(), []))
        lock, done = entry
        with lock:  # the first ask builds; the others wait for it and share its answer
            if done and (done[0][0] and not os.path.exists(done[0][1][0])  # a Cleanup took it
                         or not done[0][0] and done[0][2] != sweep):
                done.clear()
            if not done:
                try:
                    done.append((True, provide(), sweep))
                except Exception as e:
                    done.append((False, e, sweep))
        ok, value, _ = done[0]
        if not ok:
            raise value
        return value

    def keys(self) -> list[str]:
        """The interpreters this node has provided (an earlier sweep's included)."""
        with self.lock:
            return [k for k, (_, done) in self.found.items() if done and done[0][0]]


def agent(node_id: str) -> Any:
    return NodeAgent.options(
        name=f"wtb-node-{node_id}", namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True,
        # In the node's own Python. (With shared_disk=false it inherits the working_dir of
        # the sweep that made it, as every actor of a job does: Ray has no opting out.)
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote()


class Placer:
    """Where the next actor goes. One per pool: counts the actors it placed per node."""

    def __init__(self, num_cpus: float) -> None:
        self.num_cpus = num_cpus
        self.placed: Counter[str] = Counter()
        self.provided: defaultdict[str, set[str]] = defaultdict(set)  # node -> env keys
        self.lost: set[str] = set()  # nodes an actor died on that Ray no longer lists alive
        # nodes an actor died on: Ray may list a lost node alive for tens of seconds (its
        # health checks), and a retry placed there never runs; picked last from then on
        self.suspect: set[str] = set()
        self.asked = False  # whether the agents were asked what they have (ask)

    def pick(self, key: str | None) -> str:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] not in self.lost
                 and n["Resources"].get("CPU", 0) >= self.num_cpus]
        if not nodes:
            raise RuntimeError(f"no alive Ray node has {self.num_cpus} CPUs for a job "
                               "(hydra.launcher.num_cpus)")
        if key is not None and not self.asked:
            self.ask([n["NodeID"] for n in nodes])

        def score(node: dict[str, Any]) -> tuple[bool, bool, bool, float]:
            free = node["Resources"]["CPU"] / self.num_cpus - self.placed[node["NodeID"]]
            return (node["NodeID"] not in self.suspect, free >= 1,
                    key in self.provided[node["NodeID"]], free)

        return max(nodes, key=score)["NodeID"]

    def ask(self, node_ids: list[str]) -> None:
        """What the nodes' agents have from earlier sweeps, once per sweep: a job goes where
        its env is already, rather than have it built on another node."""
        self.asked = True
        agents = {}
        for node_id in node_ids:
            try:
                agents[node_id] = ray.get_actor(f"wtb-node-{node_id}", namespace=NAMESPACE)
            except ValueError:  # no agent there yet
                continue
        refs = {node_id: a.keys.remote() for node_id, a in agents.items()}
        for node_id, ref in refs.items():
            try:
                self.provided[node_id].update(ray.get(ref, timeout=10))
            except Exception:  # an agent that does not answer: it knows nothing, then
                continue

    def gone(self, node_id: str) -> None:
        """An actor on `node_id` died: pick it last from now on; if Ray says the node is gone,
        never again."""
        self.suspect.add(node_id)
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            self.lost.add(node_id)


def relocate(config: DictConfig, launch_dir: str, jobs_root: Path) -> None:
    """A shipped job runs from its copy of the launch dir, with its job dir on this node."""
    driver_dir = Path(str(config.hydra.runtime.cwd))
    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        rel = sweep_dir.relative_to(driver_dir)
    except ValueError:  # a sweep dir outside the launch dir: its path, under the root
        rel = sweep_dir.relative_to(sweep_dir.anchor)
    # (Hydra marks hydra.runtime read-only itself: each node is opened on its own)
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.cwd = launch_dir
    with read_write(config.hydra.sweep), open_dict(config.hydra.sweep):
        config.hydra.sweep.dir = str(jobs_root / rel)


def jobs_root() -> Path:
    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / JOBS_DIR / context.get_node_id()


def place(placer: Placer, plan: Any, options: dict[str, Any], make: Any,
          on_node: Any) -> Future:
    """An actor for `plan` on the node `placer` picks: its interpreter provided there first
    (plan.node_env), then `make(options)` with node affinity. Resolves to the actor;
    `on_node(node_id)` is told the node at once."""
    key = plan.node_env.key if plan.node_env else None
    node = placer.pick(key)
    placer.placed[node] += 1
    on_node(node)
    out: Future = Future()
    options = {**options,
               "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}

    def made(python: str | None, path: list[str], env_vars: dict[str, str]) -> None:
        runtime_env = dict(options.get("runtime_env") or {})
        if python:
            runtime_env["py_executable"] = python
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars,
                                       "PYTHONPATH": ":".join(path)}
        try:
            out.set_result(make({**options, "runtime_env": runtime_env} if runtime_env
                                else options))
        except BaseException as e:
            out.set_exception(e)

    if key is None:
        made(None, [], {})
        return out

    def provided(f: Future) -> None:
        try:
            python, path, env_vars = f.result()
        except BaseException as e:  # the build failed, or the node went meanwhile
            out.set_exception(e)
            return
        placer.provided[node].add(key)
        made(python, path, env_vars)

    sweep = ray.get_runtime_context().get_job_id()
    agent(node).provide.remote(key, plan.node_env.provide, sweep).future().add_done_callback(
        provided)
    return out
