"""The process harness and statistics of the benchmarks, apart from what they measure.

A benchmark runs each configuration in a child process of its own (so that its peak memory is the
child's own ``ru_maxrss``) and interleaves them: every child trains some untimed warm-up steps and
pauses; then, round after round, the parent releases one child at a time for a block of steps while
the others wait. The child side is :class:`StepClock` (a hook on every optimizer step: time stamps,
memory high-water marks, the pause at block boundaries); the parent side is :func:`start_process`,
:class:`Child` and :func:`run_rounds`. The statistics turn the stamps into per-block rates
(:func:`block_rates`, :func:`summarise_rates`) and speed ratios between configurations
(:func:`paired_step_ratio`, :func:`round_ratios`, :func:`median_spread`); :func:`run_environment`
records what a report needs to be reproduced.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Child side: stamp every optimizer step, pause at block boundaries
# --------------------------------------------------------------------------------------------------


@dataclass
class StepClock:
    """Stamps the end of every optimizer step (wall and CPU time) in a child process.

    After the first and the last of ``total_steps`` it records the process's RSS high-water mark;
    at each step count in ``boundaries`` it writes "ready N" to the parent and blocks until the
    parent writes a line (``control`` is "read_fd,write_fd" of the two pipes; None: never pauses).
    """

    total_steps: int
    boundaries: set[int] = field(default_factory=set)
    control: str | None = None
    stamps: list[float] = field(default_factory=list)
    cpu_stamps: list[float] = field(default_factory=list)
    released: list[float] = field(default_factory=list)
    released_cpu: list[float] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)

    def install(self) -> None:
        """Register the hook on every torch optimizer's step, and open the pipes to the parent."""
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._pipes = None
        if self.control:
            read_fd, write_fd = (int(fd) for fd in self.control.split(","))
            self._pipes = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
        register_optimizer_step_post_hook(self.on_step_end)

    def on_step_end(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import resource

        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        if len(self.stamps) in (1, self.total_steps):  # the process's high-water mark so far
            key = "after_first_step" if len(self.stamps) == 1 else "after_last_step"
            self.rss_mib[key] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self._pipes is not None and len(self.stamps) in self.boundaries:
            control, status = self._pipes
            status.write(f"ready {len(self.stamps)}\n")
            status.flush()
            if not control.readline():  # the parent is gone
                os._exit(3)
            self.released.append(time.perf_counter())
            self.released_cpu.append(time.process_time())

    def record(self, started: float) -> dict[str, Any]:
        """The stamps for the child's result file (``started``: when the process started)."""
        return dict(
            step_end_times=self.stamps,
            step_end_cpu_times=self.cpu_stamps,
            released_times=self.released,
            released_cpu_times=self.released_cpu,
            rss_high_water_mib=self.rss_mib,
            seconds_to_first_step=self.stamps[0] - started if self.stamps else None,
        )


STAMP_KEYS = ("step_end_times", "step_end_cpu_times", "released_times", "released_cpu_times")
"""The per-step lists of :meth:`StepClock.record`, which a report leaves out of a child's summary."""


# --------------------------------------------------------------------------------------------------
# Parent side: start children, release them block by block
# --------------------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    result_path: Path
    log_path: Path
    control: Any = None  # parent -> child: "go" lines
    status: Any = None  # child -> parent: "ready N" lines

    def failure(self, what: str) -> RuntimeError:
        tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        return RuntimeError(f"{self.name}: {what}; the end of its log {self.log_path}:\n{tail}")

    def wait_ready(self) -> None:
        if not self.status.readline():
            self.process.wait()
            raise self.failure(f"exited with code {self.process.returncode} before pausing")

    def release(self) -> None:
        self.control.write("go\n")
        self.control.flush()

    def finish(self) -> dict:
        """Wait for the process; return its result with its peak RSS (ru_maxrss of the child)."""
        _, wait_status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(wait_status)
        for pipe in (self.control, self.status):
            if pipe is not None:
                pipe.close()
        if self.process.returncode != 0:
            raise self.failure(f"exited with code {self.process.returncode}")
        result = json.loads(self.result_path.read_text(encoding="utf-8"))
        result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
        return result


def start_process(
    name: str, command: list[str], result_path: Path, log_path: Path, *, controlled: bool
) -> Child:
    """Run ``command`` in a fresh process (offline, output to ``log_path``); when ``controlled``, with two
    pipes to pause and release it, passed to it as ``--control read_fd,write_fd``."""
    pass_fds: tuple[int, ...] = ()
    if controlled:
        control_read, control_write = os.pipe()
        status_read, status_write = os.pipe()
        command = [*command, "--control", f"{control_read},{status_write}"]
        pass_fds = (control_read, status_write)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds)
    child = Child(name, process, result_path, log_path)
    if controlled:
        os.close(control_read)
        os.close(status_write)
        child.control, child.status = os.fdopen(control_write, "w"), os.fdopen(status_read, "r")
    return child


def run_rounds(names: list[str], start: Callable[[str], Child], rounds: int) -> dict[str, dict]:
    """Start every configuration (``start(name)`` gives a controlled child), then release them block by
    block, round-robin, in an order rotated (and reversed) from round to round; returns their results."""
    children = {name: start(name) for name in names}
    try:
        for child in children.values():
            child.wait_ready()  # set-up and warm-up done
        print(f"all {len(children)} configurations warmed up; {rounds} rounds ...", flush=True)
        for round_index in range(rounds):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            for name in order[::-1] if round_index % 2 else order:
                children[name].release()
                children[name].wait_ready()
            print(f"  round {round_index + 1}/{rounds} done", flush=True)
        for child in children.values():
            child.release()  # let them finish (evaluation, checkpoint) all at once: nothing is timed now
        return {name: child.finish() for name, child in children.items()}
    finally:
        for child in children.values():
            if child.process.returncode is None and child.process.poll() is None:
                child.process.kill()


# --------------------------------------------------------------------------------------------------
# Statistics: per-block rates, ratios between configurations
# --------------------------------------------------------------------------------------------------


def block_rates(
    result: dict, *, warmup: int, rounds: int, block_steps: int, batch_tokens: Sequence[int]
) -> list[dict]:
    """Per round: rates over its block of ``block_steps`` steps, from release to the end of the last step.

    steps_per_s and tokens_per_s use wall-clock time; steps_per_cpu_s uses the child's CPU time
    (process_time), which a busy machine inflates less than wall time when the child runs one
    thread; cpu_share = CPU time / wall time (1.0: the child had a core to itself all along).
    """
    ends, cpu_ends = result["step_end_times"], result["step_end_cpu_times"]
    expected = warmup + rounds * block_steps
    if len(ends) != expected:
        raise RuntimeError(f"{result['config']}: {len(ends)} optimizer steps, expected {expected}")
    out = []
    for i in range(rounds):
        first = warmup + i * block_steps
        last = first + block_steps - 1  # index of the block's last step end
        wall = ends[last] - result["released_times"][i]
        cpu = cpu_ends[last] - result["released_cpu_times"][i]
        step_seconds = _durations(result["released_times"][i], ends[first : last + 1])
        step_cpu_seconds = _durations(result["released_cpu_times"][i], cpu_ends[first : last + 1])
        out.append(
            dict(
                steps_per_s=block_steps / wall,
                tokens_per_s=sum(batch_tokens[first : last + 1]) / wall,
                steps_per_cpu_s=block_steps / cpu,
                cpu_share=cpu / wall,
                median_step_ms=1000 * statistics.median(step_seconds),
                seconds=wall,
                step_seconds=[round(t, 6) for t in step_seconds],
                step_cpu_seconds=[round(t, 6) for t in step_cpu_seconds],
            )
        )
    return out


def _durations(start: float, ends: Sequence[float]) -> list[float]:
    """Each step's time: from the previous step's end (the first: from ``start``) to its own end."""
    return [end - begin for begin, end in zip([start, *ends[:-1]], ends)]


def median_spread(values: list[float]) -> dict:
    """Median, quartiles, min, max and count of ``values``."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return dict(
        median=statistics.median(ordered),
        q1=quartiles[0],
        q3=quartiles[2],
        min=ordered[0],
        max=ordered[-1],
        n=len(ordered),
    )


def round_ratios(timings: dict[str, list[dict]], numerator: str, denominator: str, key: str) -> dict | None:
    """numerator/denominator of ``key`` per round (blocks seconds apart, same batches); median, spread."""
    if numerator not in timings or denominator not in timings:
        return None
    values = [a[key] / b[key] for a, b in zip(timings[numerator], timings[denominator])]
    return median_spread(values)


def paired_step_ratio(
    timings: dict[str, list[dict]], numerator: str, denominator: str, key: str = "step_seconds"
) -> dict | None:
    """Speed ratio numerator/denominator from step times paired by batch: the median over every
    timed step of t_denominator / t_numerator (the two steps trained on the same batch, in the same
    round), with a 90% bootstrap interval that resamples whole rounds. A step slowed by a burst of
    load moves a median of ~300 paired steps far less than it moves a block's total."""
    import numpy as np

    if numerator not in timings or denominator not in timings:
        return None
    per_round = [
        np.asarray(b[key]) / np.asarray(a[key]) for a, b in zip(timings[numerator], timings[denominator])
    ]
    rng = np.random.default_rng(0)
    resampled = [
        float(
            np.median(np.concatenate([per_round[i] for i in rng.integers(0, len(per_round), len(per_round))]))
        )
        for _ in range(1000)
    ]
    return dict(
        median=float(np.median(np.concatenate(per_round))),
        ci90=[float(np.quantile(resampled, 0.05)), float(np.quantile(resampled, 0.95))],
        n_steps=int(sum(len(r) for r in per_round)),
    )


def window_means(step_losses: list[float], every: int) -> list[list[float]]:
    """[step, mean loss over the ``every`` steps ending there], as both trainers log them."""
    out = [
        [end, sum(step_losses[end - every : end]) / every]
        for end in range(every, len(step_losses) + 1, every)
    ]
    if len(step_losses) % every:
        start = len(step_losses) // every * every
        out.append([len(step_losses), sum(step_losses[start:]) / (len(step_losses) - start)])
    return out


RATES = ("steps_per_s", "tokens_per_s", "steps_per_cpu_s", "cpu_share", "median_step_ms")


def summarise_rates(results: dict[str, dict], timings: dict[str, list[dict]]) -> dict:
    """Per configuration: median and spread of each rate over its blocks, overall steps/s, memory."""
    summary = {}
    for name, result in results.items():
        row: dict[str, Any] = {}
        if name in timings:
            row.update({key: median_spread([b[key] for b in timings[name]]) for key in RATES})
            steps = sum(b["steps_per_s"] * b["seconds"] for b in timings[name])
            row["overall_steps_per_s"] = steps / sum(b["seconds"] for b in timings[name])
            row["rss_high_water_at_last_step_mib"] = result["rss_high_water_mib"].get("after_last_step")
            row["seconds_to_first_step"] = result.get("seconds_to_first_step")
        row["peak_rss_mib"] = result["peak_rss_mib"]
        summary[name] = row
    return summary


# --------------------------------------------------------------------------------------------------
# What a report records about the run
# --------------------------------------------------------------------------------------------------


def run_environment(
    *, repository: Path, watched: Sequence[str], packages: Sequence[str], threads: int
) -> dict:
    """The command, git commit (and uncommitted paths under ``watched``), versions of ``packages``,
    threads per child and the machine (platform, CPU model, logical CPUs, load average)."""
    from importlib import metadata

    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", *command], cwd=repository, capture_output=True, text=True, check=True
            ).stdout.rstrip("\n")
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), **{name: metadata.version(name) for name in packages}}
    dirty = git("status", "--porcelain", "--", *watched).splitlines()
    return dict(
        command=shlex.join(["python", *sys.argv]),
        git_commit=git("rev-parse", "HEAD"),
        git_uncommitted_paths=[line[3:] for line in dirty],
        versions=versions,
        threads_per_child=threads,
        machine=dict(
            platform=platform.platform(),
            cpu=cpu,
            logical_cpus=os.cpu_count(),
            load_average_at_start=list(os.getloadavg()),
        ),
    )
