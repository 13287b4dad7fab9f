"""`unlearn rescore`: recompute every score from stored confidences, rerunning nothing.

After a metric fix, the runs and references in the store still hold everything the metric
needs; only the scores are rewritten (with the new METRIC_VERSION), and the leaderboards are
rebuilt from them. An entry is scored on exactly the runs `unlearn run` scores it on
(`harness.scoring.scores.record_entry_score`), so the two agree. Extras and runs are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError
from harness.results.lock import writer_lock
from harness.results.store import LEADERBOARDS, Store
from harness.sandbox.protocol import PROTOCOL_VERSION
from harness.scoring.scores import record_entry_score, reference_noise_floor, select_runs
from harness.statuses import Status


def rescore(run_dir: str | Path, *, write: bool = True, log: Callable[[str], None] = lambda msg: None) -> int:
    """Re-score every scored submission whose runs are all ok; returns how many were rescored.
    Holds the run folder's writer lock; says which entries rest on runs of an older run protocol."""
    run_dir = Path(run_dir)
    db = run_dir / "results.sqlite"
    if not db.is_file():
        raise HarnessError(f"no results store at {db}; pass the run folder of a competition (runs/<name>)")
    with writer_lock(run_dir), Store(db, create=False) as store:
        config_runs = ((store.competition().config or {}).get("submissions") or {}).get("n_runs")
        count = 0
        for leaderboard in LEADERBOARDS:
            refs = store.references(leaderboard)
            if refs is None:
                continue
            ref_confs = store.load_array(refs.confs_file)
            floor = reference_noise_floor(ref_confs)
            for old in store.scores(leaderboard):
                n_runs = int(config_runs or old.n_runs or 0)
                if old.status is not Status.OK or not select_runs(store.runs(old.submission_id, leaderboard), n_runs).complete:
                    continue  # a failure stays as it was recorded, with its reason
                record_entry_score(store, old.submission_id, leaderboard=leaderboard, n_runs=n_runs, references=refs,
                                   reference_confs=ref_confs, noise_floor=floor, time_cap_s=old.time_cap_s)
                count += 1
            old_protocol = store.old_protocol_entries(leaderboard)
            if old_protocol:
                teams = ", ".join(store.submission(sid).team for sid in sorted(old_protocol))
                log(f"{leaderboard}: {len(old_protocol)} entr{'y rests' if len(old_protocol) == 1 else 'ies rest'} on runs "
                    f"of an older run protocol ({min(old_protocol.values())} < {PROTOCOL_VERSION}): {teams}; "
                    "`unlearn run` runs them again")
        if write:
            from harness.results.leaderboard import write_leaderboard

            write_leaderboard(store, run_dir)
    return count
