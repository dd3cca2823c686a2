"""Train for a wall-clock budget: an mmengine hook that fits max_iters, the LR schedule and the intervals to it.

The budget covers the training loop (iterations, validations, checkpoint saves), not model building or export.
After a few timed iterations the hook estimates seconds per iteration (and per validation, once one has run),
sets the loop's max_iters to what fits, rebuilds the param schedulers for that length (begin/end scaled from the
config's max_iters, then stepped forward to the current iteration, so the LR follows the schedule a run planned
for that length from the start would have followed), and scales the validation and checkpoint intervals so the
run validates and saves as often as its config asks. It re-plans at every tenth of the budget and after each
validation, and stops at once (the last iteration still validates and saves) when the budget is spent.
The plan is kept in the message hub, which mmengine checkpoints, so a resumed run continues the same budget.
The clock (time.perf_counter) is injectable and read once per iteration and at each validation's start and end,
so a test can drive the budget with a fake clock.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable

from mmengine.dist import broadcast_object_list, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmseg.registry import HOOKS

INFO_KEY = "time_budget"


def scaled_schedulers(schedulers: list[dict], from_iters: int, to_iters: int) -> list[dict]:
    """Scheduler configs with begin/end scaled from a from_iters-long run to a to_iters-long one."""
    out = []
    for s in schedulers:
        if s.get("by_epoch", True) or s.get("convert_to_iter_based", False):
            raise ValueError(f"param_scheduler {s.get('type')} must be iteration-based (by_epoch=False) to be rescaled")
        s = copy.deepcopy(dict(s))
        s["begin"] = round(s.get("begin", 0) * to_iters / from_iters)
        s["end"] = max(s["begin"] + 1, round(s["end"] * to_iters / from_iters))
        out.append(s)
    return out


def planned_count(max_iters: int, interval: int) -> int:
    """How many validations (or checkpoints) a max_iters run with this interval makes, the last one included."""
    return max(1, math.ceil(max_iters / max(1, interval)))


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Stop training after `minutes` of wall time, with max_iters, LR schedule and intervals fitted to it."""

    # after ParamSchedulerHook (LOW = 70) stepped the schedulers this iteration, before CheckpointHook
    # (VERY_LOW = 90), so that a new last iteration is saved as the last one
    priority = 80

    def __init__(
        self, minutes: float, skip_iters: int = 2, calibrate_iters: int = 3, tolerance: float = 0.02,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not minutes > 0:
            raise ValueError(f"TimeBudgetHook: minutes must be > 0, got {minutes}")
        self.budget = 60.0 * float(minutes)
        self.clock = clock  # injectable: tests drive the budget with a fake clock
        self.skip_iters = skip_iters  # the first iterations start workers and allocate memory: not timed
        self.calibrate_iters = calibrate_iters
        self.tolerance = tolerance  # re-plans that change max_iters by less than this fraction keep the schedule
        self.val_seconds: list[float] = []
        self.elapsed_before = 0.0  # seconds spent by earlier processes of a resumed run

    # -- timing --------------------------------------------------------------------------------------------
    def elapsed(self, now: float) -> float:
        """Seconds of this budget spent at clock reading now (earlier processes of a resumed run included)."""
        return self.elapsed_before + now - self.start

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        cfg = runner.cfg
        self.config_iters = int(cfg.train_cfg.max_iters)
        self.config_schedulers = [dict(s) for s in cfg.param_scheduler]
        self.checkpoint_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        self.validates = cfg.get("val_cfg") is not None
        self.n_val = planned_count(self.config_iters, loop.val_interval) if self.validates else 0
        self.n_ckpt = planned_count(self.config_iters, self.checkpoint_hook.interval) if self.checkpoint_hook else 0
        saved = runner.message_hub.get_info(INFO_KEY)
        if runner.iter > 0 and saved:  # resumed: same budget, same plan (the schedulers come back from the checkpoint)
            self.elapsed_before = float(saved["elapsed"])
            self.val_seconds = list(saved["val_seconds"])
            self._apply_intervals(runner, int(saved["max_iters"]))
        # at least enough iterations to calibrate, whatever the config's nominal length
        loop._max_iters = max(loop.max_iters, runner.iter + self.skip_iters + self.calibrate_iters + 1)
        self.start = self.clock()
        self.timed_after = runner.iter + self.skip_iters  # iterations done when timing starts
        self.timed_from: tuple[float, int, float] | None = None  # (time, iterations done, validation seconds)
        self.next_plan = self.timed_after + self.calibrate_iters
        self.next_fraction = math.floor(10 * self.elapsed_before / self.budget + 1) / 10
        self.val_started = 0.0

    def before_val(self, runner) -> None:
        self.val_started = self.clock()

    def after_val(self, runner) -> None:
        self.val_seconds.append(self.clock() - self.val_started)
        self.next_plan = runner.iter  # re-plan with the measured validation time at the next iteration

    # -- planning ------------------------------------------------------------------------------------------
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        done = runner.iter + 1  # iterations finished (the loop increments its counter after this hook)
        now = self.clock()
        if self.timed_from is None and done >= self.timed_after:
            self.timed_from = (now, done, sum(self.val_seconds))
        decision = self._decide(runner, done, now) if is_main_process() else None
        if get_world_size() > 1:  # every rank must stop at the same iteration
            holder = [decision]
            broadcast_object_list(holder, src=0)
            decision = holder[0]
        if decision is not None:
            self._apply(runner, done, decision, now)
        runner.message_hub.update_info(
            INFO_KEY,
            dict(
                elapsed=self.elapsed(now),
                max_iters=runner.train_loop.max_iters,
                val_seconds=self.val_seconds,
                budget=self.budget,
            ),
        )

    def _val_estimate(self) -> float:
        return sum(self.val_seconds) / len(self.val_seconds) if self.val_seconds else 0.0

    def _decide(self, runner, done: int, now: float) -> int | None:
        """The new max_iters, or None to keep the plan."""
        elapsed = self.elapsed(now)
        last_val = self._val_estimate() if self.validates else 0.0
        if elapsed + last_val >= self.budget:  # spent: this iteration is the last one (it still validates and saves)
            return done if done < runner.train_loop.max_iters else None
        due = done >= self.next_plan or elapsed >= self.next_fraction * self.budget
        if not due or self.timed_from is None or done <= self.timed_from[1]:
            return None
        self.next_fraction = math.floor(10 * elapsed / self.budget + 1) / 10
        self.next_plan = runner.train_loop.max_iters + 1  # next: at the next tenth of the budget or validation
        t0, done0, val0 = self.timed_from
        per_iter = max(1e-6, (now - t0 - (sum(self.val_seconds) - val0)) / (done - done0))
        planned = runner.train_loop.max_iters
        vals_left = 0
        if self.validates:
            interval = max(1, math.ceil(planned / self.n_val))
            vals_left = max(1, self.n_val - done // interval)
        left = self.budget - elapsed - vals_left * self._val_estimate()
        new_max = done + max(0, int(left / per_iter))
        if abs(new_max - planned) <= self.tolerance * planned:
            return None
        return new_max

    def _apply(self, runner, done: int, new_max: int, now: float) -> None:
        loop = runner.train_loop
        if new_max == done:
            runner.logger.info(f"time budget of {self.budget / 60:g} min spent: stopping after iteration {done}")
            loop._max_iters = done
            return
        self._rebuild_schedulers(runner, done, new_max)
        self._apply_intervals(runner, new_max)
        runner.message_hub.update_info("max_iters", new_max)
        runner.logger.info(
            f"time budget {self.budget / 60:g} min: {self.elapsed(now):.0f} s for {done} iterations, "
            f"planning {new_max} iterations (LR schedule and intervals rescaled)"
        )

    def _apply_intervals(self, runner, max_iters: int) -> None:
        loop = runner.train_loop
        loop._max_iters = max_iters
        if self.validates:
            loop.val_interval = max(1, math.ceil(max_iters / self.n_val))
            # IterBasedTrainLoop resets val_interval from dynamic_intervals after every iteration
            loop.dynamic_milestones, loop.dynamic_intervals = [0], [loop.val_interval]
        if self.checkpoint_hook is not None:
            self.checkpoint_hook.interval = max(1, math.ceil(max_iters / self.n_ckpt))

    def _rebuild_schedulers(self, runner, done: int, new_max: int) -> None:
        """Schedulers for a new_max-long run, stepped `done` times as ParamSchedulerHook would have."""
        optimizer = runner.optim_wrapper
        # mmengine's schedulers are chained (each step multiplies the current value): restart from the initial values
        for scheduler in runner.param_schedulers:
            for group in optimizer.param_groups:
                group[scheduler.param_name] = group[f"initial_{scheduler.param_name}"]
        with warnings.catch_warnings():
            # stepping a fresh scheduler before the optimizer makes mmengine warn about call order; it is a replay
            warnings.filterwarnings("ignore", message="Detected call of `scheduler.step", category=UserWarning)
            schedulers = runner.build_param_scheduler(
                scaled_schedulers(self.config_schedulers, self.config_iters, new_max)
            )
            for _ in range(done):
                for scheduler in schedulers:
                    scheduler.step()
        runner.param_schedulers = schedulers
