"""Order a planned sweep's launches around shared stable phases (schedule.share_stable): the
waves, what each run waits for, and a note on how many tokens the sharing saves.
"""

from __future__ import annotations

from collections.abc import Sequence

from sweep.grid import GridPoint


def launch_waves(points: Sequence[GridPoint]) -> list[list[GridPoint]]:
    """The points to train or resume, in waves the sweeper launches one after another: wave k
    holds the k-th smallest budget of every shared trajectory (and wave 0 every point that shares
    nothing), in grid order. A parallel launcher then trains the trajectories side by side, each
    run continuing the state the wave before saved; the basic launcher trains them in turn."""
    todo = [p for p in points if p.action != "skip"]
    trajectories: dict[str, list[GridPoint]] = {}
    for p in todo:
        if p.stable_hash is not None:
            trajectories.setdefault(p.stable_hash, []).append(p)
    wave = {id(p): 0 for p in todo}
    for runs in trajectories.values():
        for k, p in enumerate(sorted(runs, key=lambda p: p.D)):
            wave[id(p)] = k
    waves = [[p for p in todo if wave[id(p)] == k] for k in range(max(wave.values(), default=-1)
                                                                 + 1)]
    return [w for w in waves if w]


def predecessors(order: Sequence[GridPoint]) -> list[int | None]:
    """For points in launch order (the waves, one after another): the position of the point
    each continues, the one before it on its shared trajectory (None: it continues none), which a
    launcher that can (gpu_pool's launch_after) waits for instead of a whole wave."""
    last: dict[str, int] = {}
    after: list[int | None] = []
    for i, p in enumerate(order):
        after.append(last.get(p.stable_hash) if p.stable_hash is not None else None)
        if p.stable_hash is not None:
            last[p.stable_hash] = i
    return after


def release_files(order: Sequence[GridPoint], after: Sequence[int | None]) -> list[str | None]:
    """For points in launch order and their predecessors: the state file whose save releases
    each (its predecessor's, at that run's cooldown start), so that it trains while the
    predecessor cools down; None where it continues nothing."""
    return [None if a is None else order[a].stable_state for a in after]


def sharing_note(points: Sequence[GridPoint], chained: bool = False) -> str | None:
    """What sharing stable phases saves the points to train (in launch order), or why two
    points of one size share nothing; None when no point shares (schedule.share_stable=false).
    `chained`: the launcher starts each run once the one it continues has ended (launch_after),
    rather than wave by wave."""
    waves = launch_waves(points)
    todo = [p for wave in waves for p in wave if p.stable_hash is not None]
    if not todo:
        return None
    groups: dict[str, list[GridPoint]] = {}
    for p in todo:
        groups.setdefault(p.stable_hash or "", []).append(p)
    # States a run can continue: those on disk, and those the grid's finished runs saved
    saved = {key: {0, *group[0].stable_saved} for key, group in groups.items()}
    for p in points:
        if p.action == "skip" and p.stable_hash in saved and p.stable_tokens:
            saved[p.stable_hash].add(p.stable_tokens)
    trained = 0
    for key, group in groups.items():
        for p in group:
            own = p.stable_tokens or 0
            trained += p.D - max(t for t in saved[key] if t <= own)
            saved[key].add(own)
    total = sum(p.D for p in todo)
    sizes = [p.N for p in todo]
    if trained == total and len(set(sizes)) < len(sizes):
        return (
            "note: schedule.share_stable=true, but no two points of one size in this grid share "
            "a stable phase: their LR, batch or warmup differ with the budget; set "
            "hparams.horizon.tokens_per_param to the grid's largest D/N (the rules then see one D "
            "per size) with schedule.warmup_fraction=null (pinning train.lr and "
            "train.batch_tokens is not enough: the warmup is a fraction of each run's own steps)"
        )
    if trained == total:
        return None  # one budget per size: nothing to share
    return (
        f"shared stable phases: {len(todo)} run{'s' if len(todo) > 1 else ''} in {len(groups)} "
        f"trajector{'y' if len(groups) == 1 else 'ies'} train {trained:,} of their {total:,} "
        f"tokens ({trained / total:.0%}), each from the state the one before it saved where its "
        "cooldown began: "
        + ("each launched once the run before it on its trajectory has saved that state (while "
           "it cools down) or has ended" if chained else
           f"launched in {len(waves)} wave{'s' if len(waves) > 1 else ''}, one budget of each "
           "trajectory a wave")
    )
