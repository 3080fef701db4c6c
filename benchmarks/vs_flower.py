"""The same federated LoRA job in this runner and in Flower, rounds interleaved in one run.

    .venv/bin/python benchmarks/vs_flower.py                 # SmolLM2-135M, 3 rounds
    .venv/bin/python benchmarks/vs_flower.py --quick         # tiny-llama smoke test (~2 min)
    # options: --rounds 3 --clients 5 --local-steps 8 --seed 0 --threads 2 --json OUT

The job is examples/demo.yaml (``--quick``: examples/tiny.yaml) with the options applied:
SmolLM2-135M (the runner's cached conversion, loaded by ``workers.runner.bench`` in both),
wordnet-topics with the runner's seeded Dirichlet split and held-out set, batch 4, LoRA rank
8 on q/v, AdamW, every client in every round. Three sides, each its own process tree:

- ours, fedit: the runner's step functions (``train_client`` for each client, ``aggregate``,
  ``finish_round``'s evaluation), as ``fedmomentum run`` calls them;
- Flower, fedit: ``benchmarks/flower/apps.py`` in the Simulation Engine: FedAvg of the PEFT
  state dicts (FlowerTune's server), the runner's training loop and evaluation inside the
  ClientApp and the ServerApp's evaluate function;
- ours, fedmomentum.

Flower runs in its own virtual environment, created here on first use from the pinned
``benchmarks/flower/requirements.txt`` (``benchmarks/.flower-venv``; this repository is on its
PYTHONPATH, not installed). Every process of every side uses ``--threads`` torch threads.

Rounds alternate: round t of each side in turn (the order rotating every round), each side
idle (blocked on its pipe) while another runs, so slow drift in what else the shared machine
does reaches all sides alike; whole runs one after the other would give each side a
different stretch of the machine's load. Round wall time: from this process sending ``go``
to the side reporting the round evaluated, so it includes training, aggregation and the
global evaluation; "compute" is the clients' seconds inside the optimizer loop.

Peak memory: this process samples every side's process tree (``--sample-every``, 1 s) and
reports the largest total PSS (shared pages split among the processes that map them: the
tree's own memory) and total RSS. Reading PSS makes the kernel walk each process's page
tables, which is not free: at 0.25 s the sampler took ~15% of a core on the 2-core machine.
Everything started is stopped on any exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the repo's code
    sys.path.insert(0, str(ROOT))

from backend.core.config import ExperimentConfig, load_config  # noqa: E402
from benchmarks.flower.protocol import CMD_FD_ENV, EVENT_FD_ENV  # noqa: E402

FLOWER_DIR = ROOT / "benchmarks" / "flower"
REQUIREMENTS = FLOWER_DIR / "requirements.txt"
DEFAULT_VENV = ROOT / "benchmarks" / ".flower-venv"
STOP_GRACE_S = 10.0
SIDES = (("ours", "fedit"), ("flower", "fedit"), ("ours", "fedmomentum"))


# --- the job --------------------------------------------------------------------------------


def job_config(args: argparse.Namespace, strategy: str) -> ExperimentConfig:
    """The demo (or tiny) config with the benchmark's options; CPU, every client each round."""
    base = load_config(ROOT / "examples" / ("tiny.yaml" if args.quick else "demo.yaml"))
    data = base.model_dump()
    data.update(name=f"vs-flower-{strategy}", seed=args.seed, strategy=strategy, device="cpu")
    data["federation"].update(
        num_clients=args.clients, clients_per_round=args.clients, rounds=args.rounds
    )
    data["training"].update(local_steps=args.local_steps, batch_size=4)
    data["lora"].update(rank=8, target_modules=["q_proj", "v_proj"])
    return ExperimentConfig.model_validate(data)


# --- the Flower environment -----------------------------------------------------------------


def flower_python(venv: Path) -> Path:
    """The venv's python, creating the venv or reinstalling when the requirements changed."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = venv / ".requirements.sha256"
    python = venv / "bin" / "python"
    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return python
    print(f"installing Flower into {venv} from {REQUIREMENTS.relative_to(ROOT)} (once)", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True
    )
    marker.write_text(digest + "\n")
    return python


# --- processes ------------------------------------------------------------------------------


class SideFailed(RuntimeError):
    pass


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time in clock ticks, state) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parens
        table[int(entry)] = (int(fields[1]), int(fields[19]), fields[0])
    return table


def _tree(root: int, table: dict[int, tuple[int, int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root] if root in table else []
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; zeros when it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss


@dataclass
class Side:
    """One framework-and-strategy process tree, driven over two pipes."""

    framework: str
    strategy: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start time, for the cleanup
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_processes: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)
    startup_seconds: float = 0.0
    _cmd: int = -1
    _events: int = -1
    _buffer: bytes = b""

    @property
    def name(self) -> str:
        return f"{self.framework} {self.strategy}"

    def start(self) -> None:
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        env = {**self.env, CMD_FD_ENV: str(cmd_r), EVENT_FD_ENV: str(ev_w)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(cmd_r, ev_w),
                start_new_session=True,  # Ctrl-C reaches only this process; it stops the rest
            )
        os.close(cmd_r)
        os.close(ev_w)
        self._cmd, self._events = cmd_w, ev_r

    def send(self, command: str) -> None:
        try:
            os.write(self._cmd, (command + "\n").encode())
        except BrokenPipeError as e:
            raise SideFailed(self._failure("exited before the command " + command)) from e

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be ``event``; SideFailed on exit, error or timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SideFailed(self._failure(f"no {event!r} within {timeout:.0f} s"))
            ready, _, _ = select.select([self._events], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._events, 65536)
                if not chunk:
                    raise SideFailed(self._failure(f"exited while waiting for {event!r}"))
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if message.get("event") != event:
            raise SideFailed(self._failure(f"sent {message} while waiting for {event!r}"))
        return message

    def _failure(self, what: str) -> str:
        tail = self.log.read_text(errors="replace").splitlines()[-40:] if self.log.exists() else []
        return f"{self.name}: {what}; last lines of its log ({self.log}):\n" + "\n".join(tail)

    def sample(self, table: dict[int, tuple[int, int, str]]) -> None:
        if self.proc is None:
            return
        pids = _tree(self.proc.pid, table)
        rss = pss = 0
        for pid in pids:
            self.seen.setdefault(pid, table[pid][1])
            r, p = _memory_kb(pid)
            rss, pss = rss + r, pss + p
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_processes = max(self.peak_processes, len(pids))

    def stop(self, finished: bool) -> list[str]:
        """Close the pipes (the side exits on end of file), give a side that ``finished`` a
        minute to exit by itself, then SIGTERM and, after a grace period, SIGKILL every
        process of its tree still alive (zombies aside); returns those signalled."""
        for fd in (self._cmd, self._events):
            if fd >= 0:
                os.close(fd)
        self._cmd = self._events = -1
        if self.proc is None:
            return []
        table = _proc_table()
        for pid in _tree(self.proc.pid, table):
            self.seen.setdefault(pid, table[pid][1])

        def alive() -> list[int]:
            now = _proc_table()
            return [
                p for p, t in self.seen.items() if p in now and now[p][1] == t and now[p][2] != "Z"
            ]

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=60.0 if finished else 1.0)
        deadline = time.monotonic() + (STOP_GRACE_S if finished else 0.0)
        while finished and alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # what the side started (Ray's processes) is shutting down too
        killed = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = alive()
            for pid in pids:
                try:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    os.kill(pid, sig)
                    killed.append(f"{pid} ({name}, {sig.name})")
                except (ProcessLookupError, FileNotFoundError):
                    pass
            deadline = time.monotonic() + STOP_GRACE_S
            while pids and time.monotonic() < deadline:
                self.proc.poll()  # reap our own child so it does not linger as a zombie
                time.sleep(0.1)
                pids = alive()
            if not pids:
                break
        self.proc.poll()
        return killed


class Sampler(threading.Thread):
    """Peak memory of every side's process tree, and the pids it saw (for the cleanup)."""

    def __init__(self, sides: list[Side], every: float) -> None:
        super().__init__(daemon=True)
        self.sides, self.every = sides, every
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            table = _proc_table()
            for side in self.sides:
                side.sample(table)
            self.halt.wait(self.every)


# --- our side -------------------------------------------------------------------------------


def run_ours(args: argparse.Namespace) -> None:
    """The runner's steps, one round per ``go`` (hidden ``--side ours``)."""
    from benchmarks.flower.protocol import Channel, die_with_parent, set_threads

    die_with_parent()
    channel = Channel()
    set_threads(args.threads)

    import torch
    from safetensors.torch import save_file

    from backend.core.runs import RunPaths
    from workers.runner import (
        aggregate,
        evaluate,
        finish_round,
        prepare,
        read_group,
        sample_clients,
        train_client,
    )

    cfg = ExperimentConfig.model_validate_json(Path(args.job).read_text())
    paths = prepare(cfg, RunPaths.at(args.run_dir))
    channel.send("ready", **evaluate(paths, 0))
    for t in range(cfg.federation.rounds):
        channel.expect("go")
        start = time.perf_counter()
        records = [train_client(paths, t, c) for c in sample_clients(cfg, t)]
        failed = [f"client {r.client}: {r.error}" for r in records if not r.ok]
        if failed:
            raise RuntimeError(f"round {t}: " + "; ".join(failed))
        aggregate(paths, t, records)
        summary, _ = finish_round(
            paths,
            t,
            started_at=None,
            train_seconds=sum(r.seconds for r in records),
            compute_seconds=sum(r.compute_seconds for r in records),
        )
        channel.send(
            "round",
            round=t + 1,
            wall_seconds=time.perf_counter() - start,
            compute_seconds=summary["compute_seconds"],
            eval_seconds=summary["eval_seconds"],
            aggregate_seconds=summary["aggregate_seconds"],
            client_threads=torch.get_num_threads(),
            accuracy=summary["accuracy"],
            eval_loss=summary["eval_loss"],
        )
    channel.expect("finish")
    adapter, _ = read_group(paths, cfg.federation.rounds, cfg.lora.rank)
    save_file({k: v.contiguous() for k, v in adapter.items() if ".lora_" in k}, args.out)
    channel.send("done", adapter=args.out)


# --- the benchmark --------------------------------------------------------------------------


def side_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),  # this checkout's code, in both environments
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        FEDMOMENTUM_DEVICE="cpu",
        FEDMOMENTUM_TORCH_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        FLWR_TELEMETRY_ENABLED="0",  # Flower and Ray would otherwise try the network
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def make_sides(args: argparse.Namespace, work: Path, flower: Path) -> list[Side]:
    sides = []
    env = side_env(args.threads)
    for framework, strategy in SIDES:
        job = work / f"{framework}-{strategy}.json"
        job.write_text(job_config(args, strategy).model_dump_json())
        out = work / f"{framework}-{strategy}.safetensors"
        common = ["--job", str(job), "--threads", str(args.threads), "--out", str(out)]
        if framework == "ours":
            argv = [sys.executable, str(Path(__file__).resolve()), "--side", "ours", *common]
            argv += ["--run-dir", str(work / f"run-{strategy}")]
        else:
            ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: socket paths
            argv = [str(flower), str(FLOWER_DIR / "main.py"), *common, "--ray-tmp", str(ray_tmp)]
        sides.append(Side(framework, strategy, argv, env, work / f"{framework}-{strategy}.log"))
    return sides


def drive(sides: list[Side], rounds: int, timeout: float) -> None:
    """Start each side in turn, then run round t of every side in turn."""
    for side in sides:
        start = time.perf_counter()
        side.start()
        side.ready = side.wait("ready", timeout)
        side.startup_seconds = time.perf_counter() - start
        print(f"{side.name}: ready in {side.startup_seconds:.1f} s", flush=True)
    for t in range(rounds):
        k = t % len(sides)
        for side in sides[k:] + sides[:k]:
            start = time.perf_counter()
            side.send("go")
            event = side.wait("round", timeout)
            event["side_wall_seconds"] = event.pop("wall_seconds")
            event["wall_seconds"] = time.perf_counter() - start
            side.rounds.append(event)
            print(
                f"round {t + 1} {side.name}: {event['wall_seconds']:.2f} s "
                f"(compute {event['compute_seconds']:.2f} s), acc {event['accuracy']:.3f}, "
                f"loss {event['eval_loss']:.4f}",
                flush=True,
            )
    for side in sides:
        side.send("finish")
        side.wait("done", timeout)


def side_summary(side: Side) -> dict[str, Any]:
    walls = [r["wall_seconds"] for r in side.rounds]
    return {
        "framework": side.framework,
        "strategy": side.strategy,
        "startup_seconds": side.startup_seconds,
        "round_seconds": walls,
        "median_round_seconds": statistics.median(walls),
        "median_compute_seconds": statistics.median(r["compute_seconds"] for r in side.rounds),
        "median_compute_share": statistics.median(
            r["compute_seconds"] / r["wall_seconds"] for r in side.rounds
        ),
        "median_eval_seconds": statistics.median(r["eval_seconds"] for r in side.rounds),
        "median_aggregate_seconds": statistics.median(r["aggregate_seconds"] for r in side.rounds),
        "client_threads": sorted({r["client_threads"] for r in side.rounds}),
        "peak_pss_mb": side.peak_pss_kb / 1024,
        "peak_rss_mb": side.peak_rss_kb / 1024,
        "peak_processes": side.peak_processes,
        "initial_accuracy": side.ready["accuracy"],
        "accuracy": [r["accuracy"] for r in side.rounds],
        "eval_loss": [r["eval_loss"] for r in side.rounds],
        "final_accuracy": side.rounds[-1]["accuracy"],
        "final_eval_loss": side.rounds[-1]["eval_loss"],
        "rounds": side.rounds,  # every round as the side reported it
    }


def adapter_difference(a: Path, b: Path) -> dict[str, float]:
    """How far two final adapters are apart: the largest |difference| over all A and B
    entries, relative to the largest |entry|, per factor."""
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    if set(x) != set(y):
        raise ValueError(f"the adapters hold different tensors: {sorted(set(x) ^ set(y))[:4]}")
    out = {}
    for factor in ("lora_A", "lora_B"):
        keys = [k for k in x if f".{factor}." in k]
        diff = max(float((x[k] - y[k]).abs().max()) for k in keys)
        scale = max(float(x[k].abs().max()) for k in keys)
        out[f"{factor}_max_abs_diff"] = diff
        out[f"{factor}_max_rel_diff"] = diff / scale if scale else diff
    return out


def report(summaries: list[dict[str, Any]], fedit: dict[str, float], args: argparse.Namespace):  # type: ignore[no-untyped-def]
    ours, flower = summaries[0], summaries[1]
    ratio = flower["median_round_seconds"] / ours["median_round_seconds"]
    print()
    print(
        f"{'side':<18} {'median round s':>14} {'rounds s':>22} {'compute share':>13} "
        f"{'eval s':>7} {'agg s':>7} {'startup s':>9} {'peak PSS MB':>11} {'peak RSS MB':>11} "
        f"{'procs':>5} {'final acc':>9} {'final loss':>10}"
    )
    for s in summaries:
        rounds = " ".join(f"{w:.2f}" for w in s["round_seconds"])
        print(
            f"{s['framework'] + ' ' + s['strategy']:<18} {s['median_round_seconds']:>14.2f} "
            f"{rounds:>22} {s['median_compute_share']:>13.1%} {s['median_eval_seconds']:>7.2f} "
            f"{s['median_aggregate_seconds']:>7.3f} {s['startup_seconds']:>9.1f} "
            f"{s['peak_pss_mb']:>11.0f} {s['peak_rss_mb']:>11.0f} {s['peak_processes']:>5} "
            f"{s['final_accuracy']:>9.3f} {s['final_eval_loss']:>10.4f}"
        )
    print(f"\nfedit median round, Flower / ours: {ratio:.2f}x")
    loss_gap = max(abs(a - b) for a, b in zip(ours["eval_loss"], flower["eval_loss"], strict=True))
    print(
        f"fedit in both: accuracy per round ours {ours['accuracy']} / Flower {flower['accuracy']}; "
        f"largest eval-loss gap {loss_gap:.2e}; final adapters: "
        + ", ".join(f"{k} {v:.1e}" for k, v in fedit.items())
    )
    return ratio, loss_gap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny-llama smoke: 2/2/2 defaults")
    parser.add_argument("--rounds", type=int, help="default 3 (quick: 2)")
    parser.add_argument("--clients", type=int, help="default 5 (quick: 2)")
    parser.add_argument("--local-steps", type=int, help="default 8 (quick: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every process")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    parser.add_argument(
        "--sample-every", type=float, default=1.0, help="seconds between memory samples"
    )
    parser.add_argument("--logs", type=Path, help="keep every side's log in this directory")
    parser.add_argument("--flower-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument(
        "--round-timeout", type=float, default=1800.0, help="seconds a side may take per step"
    )
    parser.add_argument("--side", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    small = args.quick
    args.rounds = args.rounds or (2 if small else 3)
    args.clients = args.clients or (2 if small else 5)
    args.local_steps = args.local_steps or (2 if small else 8)
    for name in ("rounds", "clients", "local_steps", "threads", "sample_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds main's finally: the sides are stopped


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side == "ours":
        run_ours(args)
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    # Ctrl-C too, even where the shell started this with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    flower = flower_python(args.flower_venv)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vs-flower-"))
    sides = make_sides(args, work, flower)
    sampler = Sampler(sides, args.sample_every)
    sampler.start()
    failed = True
    try:
        drive(sides, args.rounds, args.round_timeout)
        failed = False
    except BaseException:
        print(f"vs_flower: stopped early; stopping every side; their logs stay in {work}")
        raise
    finally:
        sampler.halt.set()
        sampler.join()
        for side in sides:
            killed = side.stop(finished=not failed)
            if killed and not failed:
                print(f"{side.name}: stopped leftover processes: {', '.join(killed)}", flush=True)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for side in sides:
                if side.log.exists():
                    shutil.copy(side.log, args.logs / side.log.name)
        for side in sides:
            if "--ray-tmp" in side.argv:
                shutil.rmtree(side.argv[side.argv.index("--ray-tmp") + 1], ignore_errors=True)
    load_after = os.getloadavg()
    summaries = [side_summary(s) for s in sides]
    fedit = adapter_difference(work / "ours-fedit.safetensors", work / "flower-fedit.safetensors")
    ratio, loss_gap = report(summaries, fedit, args)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        result = {
            "job": json.loads(job_config(args, "fedit").model_dump_json()),
            "threads": args.threads,
            "sides": summaries,
            "fedit_round_ratio_flower_over_ours": ratio,
            "fedit_max_eval_loss_gap": loss_gap,
            "fedit_final_adapter_difference": fedit,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "cpus": os.cpu_count(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
