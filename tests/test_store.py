import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.results.schema import SCHEMA_VERSION, NotAStoreError
from harness.results.store import DuplicateRunError, Store, cap_log
from harness.statuses import STATUS_DOCS, Status


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "run" / "results.sqlite") as s:
        yield s


@pytest.fixture
def sub_file(tmp_path):
    path = tmp_path / "team_a.py"
    path.write_text("def unlearning(net, retain_loader, forget_loader, val_loader):\n    pass\n")
    return path


def ok_run(store, sid, i, *, leaderboard="public", s=5, **kw):
    return store.record_run(
        sid,
        leaderboard=leaderboard,
        run_index=i,
        seed=100 + i,
        status="ok",
        seconds=1.0 + i,
        peak_mem_mb=50.0,
        retain_acc=0.9,
        test_acc=0.8,
        forget_acc=0.7,
        confs=np.full(s, float(i)),
        **kw,
    )


# -- statuses ------------------------------------------------------------------------------------


def test_status_parse_accepts_values_and_documents_each():
    assert Status.parse("timeout") is Status.TIMEOUT
    assert set(STATUS_DOCS) == set(Status)
    assert [s.value for s in Status if not s.failed] == ["ok"]


def test_status_parse_unknown_suggests_closest():
    with pytest.raises(HarnessError, match="unknown status 'time_out'; did you mean 'timeout'"):
        Status.parse("time_out")


# -- opening -------------------------------------------------------------------------------------


def test_store_creates_database_with_schema_version(tmp_path):
    path = tmp_path / "comp" / "results.sqlite"
    Store(path).close()
    assert [p.name for p in path.parent.iterdir()] == ["results.sqlite"]  # built aside, linked into place whole
    conn = sqlite3.connect(path)
    (value,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert json.loads(value) == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_refuses_newer_schema(tmp_path):
    path = tmp_path / "results.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(HarnessError, match=rf"newer harness \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\); upgrade"):
        Store(path)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(b"not a database at all" * 100, "is not a results store", id="garbage"),
        pytest.param(None, r"not a results store \(an SQLite database with other tables \(t\)\); restore it", id="foreign-sqlite"),
    ],
)
def test_store_refuses_files_that_are_not_stores(tmp_path, content, message):
    path = tmp_path / "other.sqlite"
    if content is None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes(content)
    with pytest.raises(HarnessError, match=message):
        Store(path)


def test_store_without_create_requires_existing_file(tmp_path):
    with pytest.raises(HarnessError, match="does not exist; run the competition first"):
        Store(tmp_path / "missing.sqlite", create=False)


# -- competition metadata ------------------------------------------------------------------------


def test_record_competition_round_trips(store):
    store.record_competition(config={"name": "c1", "seed": 3}, config_hash="abc", code_version="0.1.0", seeds={"seed": 3})
    store.set_meta(task_public="synthetic faces", note={"k": [1, 2]})
    assert store.get_meta("note") == {"k": [1, 2]} and store.get_meta("missing", 5) == 5
    store.record_time_cap({"time_cap_s": 2.0, "median_retrain_s": 10.0, "fraction": 0.2, "hardware": "cpu x2"}, leaderboard="private")
    info = store.competition()
    assert (info.name, info.config_hash, info.code_version, info.seeds) == ("c1", "abc", "0.1.0", {"seed": 3})
    assert info.time_caps == {"private": {"time_cap_s": 2.0, "median_retrain_s": 10.0, "fraction": 0.2, "hardware": "cpu x2"}}
    assert info.private_revealed is False
    store.reveal_private()
    assert store.private_revealed and store.competition().private_revealed


def test_record_competition_refuses_another_config(store):
    store.record_competition(config={"name": "c"}, config_hash="aaa", code_version="1")
    with pytest.raises(HarnessError, match="config hash aaa but this config hashes to bbb"):
        store.record_competition(config={"name": "c"}, config_hash="bbb", code_version="1")
    store.record_competition(config={"name": "c"}, config_hash="bbb", code_version="1", allow_change=True)
    assert store.competition().config_hash == "bbb"


# -- submissions ---------------------------------------------------------------------------------


def test_add_submission_is_idempotent_and_versions_changed_files(store, sub_file):
    first = store.add_submission(sub_file, team="a")
    assert store.add_submission(sub_file, team="a") == first
    other_team = store.add_submission(sub_file, team="b")
    sub_file.write_text(sub_file.read_text() + "# v2\n")
    second = store.add_submission(sub_file, team="a")
    assert len({first, other_team, second}) == 3
    assert [s.id for s in store.submissions()] == [first, other_team, second]
    assert [s.id for s in store.submissions(latest_only=True)] == [other_team, second]
    record = store.submission(second)
    assert (record.team, record.name, record.kind, record.exempt, len(record.version)) == ("a", "team_a", "submission", False, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"team": "a", "kind": "oracel"}, "kind must be one of 'submission', 'baseline', 'oracle', got 'oracel'", id="kind"),
        pytest.param({"team": ""}, "team must be a non-empty string", id="team"),
    ],
)
def test_add_submission_rejects_bad_input(store, sub_file, kwargs, message):
    with pytest.raises(HarnessError, match=message):
        store.add_submission(sub_file, **kwargs)


def test_add_submission_rejects_missing_file(store, tmp_path):
    with pytest.raises(HarnessError, match="nope.py does not exist"):
        store.add_submission(tmp_path / "nope.py", team="a")


def test_add_submission_checks_a_given_version(store, sub_file):
    from harness.results.store import file_version

    assert store.add_submission(sub_file, team="a", version=file_version(sub_file)) == 1
    with pytest.raises(HarnessError, match="but version 'deadbeef' was given"):
        store.add_submission(sub_file, team="a", version="deadbeef")


def test_submission_unknown_id(store):
    with pytest.raises(HarnessError, match="unknown submission id 7"):
        store.submission(7)


# -- runs ----------------------------------------------------------------------------------------


def test_record_run_round_trips(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    ok_run(store, sid, 0, log="hello")
    store.record_run(sid, leaderboard="public", run_index=1, seed=101, status=Status.TIMEOUT, reason="took 9.0 s\n> cap 2.0 s", seconds=9.0)
    runs = store.runs(sid, leaderboard="public")
    assert [(r.run_index, r.status, r.seed) for r in runs] == [(0, Status.OK, 100), (1, Status.TIMEOUT, 101)]
    assert runs[0].log == "hello" and runs[0].retain_acc == 0.9 and runs[0].confs_file.startswith("arrays/run_")
    assert runs[1].reason == "took 9.0 s > cap 2.0 s"  # one line
    assert runs[1].confs_file is None and runs[1].retain_acc is None
    np.testing.assert_array_equal(store.load_array(runs[0].confs_file), np.zeros(5))


def test_records_read_as_attributes_or_rows(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    ok_run(store, sid, 0)
    (run,) = store.all_runs()
    assert run["status"] == run.status == "ok" and run["run_index"] == 0
    np.testing.assert_array_equal(store.load_confs(run), np.zeros(5))
    with pytest.raises(KeyError):
        run["nope"]
    store.record_run(sid, leaderboard="private", run_index=0, seed=0, status="exception")
    assert [r.leaderboard for r in store.all_runs()] == ["private", "public"]
    assert len(store.all_runs("private")) == 1
    with pytest.raises(HarnessError, match=r"run 0 of submission 1 \(exception\) has no stored confidences"):
        store.load_confs(store.all_runs("private")[0])


def test_finished_runs_resumes_per_board_and_status(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    ok_run(store, sid, 0)
    ok_run(store, sid, 2)
    store.record_run(sid, leaderboard="public", run_index=1, seed=1, status="worker_died", reason="SIGKILL")
    ok_run(store, sid, 0, leaderboard="private")
    assert store.finished_runs(sid, leaderboard="public") == {0, 1, 2}
    assert store.finished_runs(sid, leaderboard="public", statuses=["ok"]) == {0, 2}
    assert store.finished_runs(sid, leaderboard="private") == {0}
    assert store.run_counts(leaderboard="public") == {sid: {"ok": 2, "worker_died": 1}}


def test_finished_runs_survive_reopening(tmp_path, sub_file):
    path = tmp_path / "results.sqlite"
    with Store(path) as s:
        sid = s.add_submission(sub_file, team="a")
        ok_run(s, sid, 0)
    with Store(path, create=False) as s:
        assert s.finished_runs(sid, leaderboard="public") == {0}
        assert s.add_submission(sub_file, team="a") == sid


def test_record_run_twice_is_rejected_unless_replaced(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    ok_run(store, sid, 0)
    old_file = store.runs(sid, leaderboard="public")[0].confs_file
    with pytest.raises(DuplicateRunError, match="run 0 of submission 1 on the public leaderboard is already stored"):
        ok_run(store, sid, 0)
    store.record_run(sid, leaderboard="public", run_index=0, seed=5, status="exception", reason="boom", replace=True)
    (run,) = store.runs(sid, leaderboard="public")
    assert (run.status, run.seed, run.confs_file) == (Status.EXCEPTION, 5, None)
    assert not (store.root / old_file).exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"status": "ok"}, "has status ok but lacks confs", id="ok-without-confs"),
        pytest.param({"status": "oom"}, "unknown status 'oom'", id="bad-status"),
        pytest.param({"status": "exception", "leaderboard": "secret"}, "leaderboard must be one of", id="bad-board"),
        pytest.param({"status": "exception", "confs": np.zeros((2, 2))}, "must be a 1-D array", id="confs-2d"),
        pytest.param({"status": "exception", "run_index": -1}, "cannot record run -1", id="negative-index"),
    ],
)
def test_record_run_rejects_bad_input(store, sub_file, kwargs, message):
    sid = store.add_submission(sub_file, team="a")
    args = {"leaderboard": "public", "run_index": 0, "seed": 0, **kwargs}
    with pytest.raises(HarnessError, match=message):
        store.record_run(sid, **args)
    assert store.finished_runs(sid, leaderboard="public") == set()


def test_record_run_unknown_submission(store):
    with pytest.raises(HarnessError, match="cannot record run 0 of submission 42"):
        store.record_run(42, leaderboard="public", run_index=0, seed=0, status="exception")


def test_record_run_caps_the_log(tmp_path, sub_file):
    with Store(tmp_path / "r.sqlite", log_cap=100) as s:
        sid = s.add_submission(sub_file, team="a")
        s.record_run(sid, leaderboard="public", run_index=0, seed=0, status="exception", log="h" * 500 + "Traceback: boom")
        log = s.runs(sid, leaderboard="public")[0].log
    assert log.startswith("h" * 25) and log.endswith("Traceback: boom") and "characters dropped" in log
    assert cap_log("short", 100) == "short"


def test_run_confs_stacks_ok_runs_in_index_order(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    for i in (3, 0, 2):
        ok_run(store, sid, i)
    store.record_run(sid, leaderboard="public", run_index=1, seed=0, status="timeout")
    index, confs = store.run_confs(sid, leaderboard="public")
    assert index.tolist() == [0, 2, 3]
    np.testing.assert_array_equal(confs[:, 0], [0.0, 2.0, 3.0])
    assert confs.shape == (3, 5)


def test_run_confs_rejects_mixed_forget_sizes(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    ok_run(store, sid, 0, s=5)
    ok_run(store, sid, 1, s=6)
    with pytest.raises(HarnessError, match="different shapes"):
        store.run_confs(sid, leaderboard="public")


# -- references ----------------------------------------------------------------------------------


def test_record_references_round_trips_and_replaces(store):
    confs = np.arange(12.0).reshape(3, 4)
    accs = {"retain_acc": [0.9, 0.91, 0.92], "test_acc": [0.8, 0.8, 0.8], "forget_acc": [0.7, 0.7, 0.7]}
    first = store.record_references(leaderboard="public", cache_key="k1", confs=confs, train_seconds=[1, 2, 3], path_used="loop", **accs)
    ref = store.references(leaderboard="public")
    assert (ref.n_models, ref.cache_key, ref.path_used) == (3, "k1", "loop")
    np.testing.assert_array_equal(ref.retain_acc, accs["retain_acc"])
    np.testing.assert_array_equal(store.reference_confs(leaderboard="public"), confs)
    assert store.references(leaderboard="private") is None
    store.record_references(leaderboard="public", cache_key="k1", confs=confs + 1, **accs)
    np.testing.assert_array_equal(store.reference_confs(leaderboard="public"), confs + 1)
    assert not (store.root / f"arrays/reference_{first}.npy").exists()
    assert store.references(leaderboard="public").train_seconds.size == 0


@pytest.mark.parametrize(
    "confs, retain, message",
    [
        pytest.param(np.zeros(4), [0.9], "must be a 2-D array", id="1d-confs"),
        pytest.param(np.zeros((2, 4)), [0.9], r"one value per model \(shape \(2,\)\)", id="acc-length"),
    ],
)
def test_record_references_rejects_bad_shapes(store, confs, retain, message):
    with pytest.raises(HarnessError, match=message):
        store.record_references(leaderboard="public", cache_key="k", confs=confs, retain_acc=retain, test_acc=retain, forget_acc=retain)


# -- scores --------------------------------------------------------------------------------------


def test_record_score_round_trips_and_rescore_overwrites(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    store.record_score(
        sid, leaderboard="public", status="ok", final_score=np.float32(0.125), forget_quality=0.2, n_runs=np.int64(8),
        metric_version=1, example_eps=np.linspace(0, 3, 5), example_points=np.ones(5),
    )  # fmt: skip
    first = store.score(sid, leaderboard="public")
    assert (first.final_score, first.n_runs, first.metric_version, first.status) == (0.125, 8, "1", Status.OK)
    np.testing.assert_array_equal(store.score_arrays(sid, leaderboard="public")["points"], np.ones(5))
    store.record_score(sid, leaderboard="public", status="timeout", reason="run 3 took 9 s > cap 2 s", final_score=float("nan"))
    second = store.score(sid, leaderboard="public")
    assert (second.status, second.final_score, second.arrays_file) == (Status.TIMEOUT, None, None)
    assert not (store.root / first.arrays_file).exists()
    assert store.score_arrays(sid, leaderboard="public") == {}
    assert len(store.scores(leaderboard="public")) == 1 and store.scores(leaderboard="private") == []


def test_record_score_fills_fields_from_a_score_object(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    score = types.SimpleNamespace(final_score=0.3, forget_quality=0.4, n_models=8, example_eps=np.zeros(5), unrelated=1)
    store.record_score(sid, leaderboard="public", status="ok", score=score, final_score=0.25, time_cap_s=2.0)
    record = store.score(sid, "public")
    assert (record.final_score, record.forget_quality, record.n_models, record.time_cap_s) == (0.25, 0.4, 8, 2.0)
    assert list(store.score_arrays(sid, "public")) == ["eps"]


def test_record_score_rejects_mismatched_arrays(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    with pytest.raises(HarnessError, match="same length, got 5 and 4"):
        store.record_score(sid, leaderboard="public", status="ok", example_eps=np.zeros(5), example_points=np.zeros(4))


def test_clear_scores_keeps_runs(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    ok_run(store, sid, 0)
    store.record_score(sid, leaderboard="public", status="ok", final_score=0.1, example_eps=np.zeros(5))
    store.record_score(sid, leaderboard="private", status="ok", final_score=0.2)
    assert store.clear_scores(leaderboard="public") == 1
    assert store.score(sid, leaderboard="public") is None and store.score(sid, leaderboard="private") is not None
    assert store.finished_runs(sid, leaderboard="public") == {0}
    assert [p.name for p in (store.root / "arrays").iterdir()] == [f"run_{1}.npy"]


# -- crash safety --------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from harness.results.store import Store

    store = Store(sys.argv[1])
    sid = store.add_submission(sys.argv[2], team="a")
    i = 0
    while True:
        store.record_run(sid, leaderboard="public", run_index=i, seed=i, status="ok", retain_acc=1.0,
                         test_acc=1.0, forget_acc=0.0, confs=np.full(20_000, float(i)))
        store.record_score(sid, leaderboard="public", status="ok", final_score=float(i),
                           example_eps=np.full(20_000, float(i)))
        i += 1
    """
)


def test_store_killed_mid_write_keeps_only_whole_rows(tmp_path, sub_file):
    path = tmp_path / "results.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(sub_file)], start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # a guard against a hung child, not a timing assertion
        while time.monotonic() < deadline and writer.poll() is None:
            if path.exists():
                with Store(path) as s:
                    if len(s.finished_runs(1, leaderboard="public")) >= 15:
                        break
            time.sleep(0.05)
        assert writer.poll() is None, "the writer exited before it was killed"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    with Store(path, create=False) as s:
        assert s._read("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
        done = s.finished_runs(1, leaderboard="public")
        assert done == set(range(len(done))) and len(done) >= 15
        for run in s.runs(1, leaderboard="public"):
            np.testing.assert_array_equal(s.load_array(run.confs_file), np.full(20_000, float(run.run_index)))
        score = s.score(1, leaderboard="public")
        np.testing.assert_array_equal(s.score_arrays(1, leaderboard="public")["eps"], np.full(20_000, score.final_score))
        ok_run(s, 1, len(done), s=20_000)  # resumes where it stopped
        assert s.finished_runs(1, leaderboard="public") == set(range(len(done) + 1))


# -- migrations ----------------------------------------------------------------------------------

# Written by the code at commit ce713d5 (schema 1, before run protocols, superseded runs and
# extras): `git worktree add /tmp/old-ce713d5 ce713d5`, then with PYTHONPATH=/tmp/old-ce713d5
# `python -m harness.cli run written-with.yaml --output /tmp/fixture/runs --submissions subs
# --private --quiet`, subs/ holding broken_team.py (broken_team.py.txt here); results.sqlite and
# arrays/ copied from runs/ce713d5/. Two baselines and a failing file on both boards, N = 4.
OLD_STORE = Path(__file__).parent / "data" / "store-ce713d5"


@pytest.fixture
def old_store_dir(tmp_path):
    """A copy of the committed old store: opening it migrates it in place."""
    run_dir = tmp_path / "ce713d5"
    shutil.copytree(OLD_STORE, run_dir)
    return run_dir


def _old_rows(db, sql):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_store_migrates_a_store_written_by_ce713d5_and_rescores_it(old_store_dir):
    from harness.results.leaderboard import build_leaderboard
    from harness.results.rescore import rescore
    from harness.sandbox.protocol import PROTOCOL_VERSION

    db = old_store_dir / "results.sqlite"
    assert _old_rows(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    old_scores = dict(_old_rows(db, "SELECT submission_id || ':' || leaderboard, final_score FROM scores WHERE status = 'ok'"))
    old_runs = _old_rows(db, "SELECT id, submission_id, leaderboard, run_index, status, confs_file FROM runs ORDER BY id")
    assert len(old_scores) == 4 and len(old_runs) == 24

    with Store(db, create=False) as s:
        info = s.competition()
        assert info.schema_version == SCHEMA_VERSION == 2 and info.name == "ce713d5"
        assert [(m["from"], m["to"]) for m in s.get_meta("migrations")] == [(1, 2)]
        runs = s.all_runs()
        assert [(r.id, r.submission_id, r.leaderboard, r.run_index, r.status.value, r.confs_file) for r in runs] == \
            [tuple(row) for row in sorted(old_runs, key=lambda row: (row[1], row[2], row[3]))]
        assert {r.protocol for r in runs} == {1} and PROTOCOL_VERSION > 1  # written before protocols were stored
        assert s.superseded_runs() == []
        s.put_extra(2, leaderboard="public", name="diagnostic", value={"kept": True})
        board = build_leaderboard(s).set_index("team")
        assert board.loc["baseline:finetune", "old_protocol"] == 1 and board.loc["broken_team", "status"] == "exception"

    notes = []
    assert rescore(old_store_dir, log=notes.append) == 4
    with Store(db, create=False) as s:
        again = {f"{x.submission_id}:{x.leaderboard}": x.final_score for x in s.scores("public") + s.scores("private") if x.status == "ok"}
        assert again == pytest.approx(old_scores, abs=1e-12)
        assert old_scores["2:public"] > 0.05  # finetune: a real score, not a degenerate zero
        assert s.get_extra(2, leaderboard="public", name="diagnostic") == {"kept": True}
    assert len(notes) == 2 and all("older run protocol (1 < 2): baseline:do_nothing, baseline:finetune" in n for n in notes)


def test_a_new_store_has_the_schema_a_migrated_one_has(tmp_path, old_store_dir):
    def schema(path):
        return sorted(_old_rows(path, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))

    Store(old_store_dir / "results.sqlite").close()
    Store(tmp_path / "new" / "results.sqlite").close()
    assert schema(old_store_dir / "results.sqlite") == schema(tmp_path / "new" / "results.sqlite")


def test_a_failed_migration_changes_nothing(old_store_dir):
    """All steps or none: a step that fails (a table named like one it creates) rolls back the others."""
    db = old_store_dir / "results.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE extras (x)")
    conn.commit()
    conn.close()
    with pytest.raises(NotAStoreError, match="table extras already exists"):
        Store(db)
    assert _old_rows(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    assert "protocol" not in {row[1] for row in _old_rows(db, "PRAGMA table_info(runs)")}
    assert not _old_rows(db, "SELECT name FROM sqlite_master WHERE name = 'superseded_runs'")


# -- a store is a store --------------------------------------------------------------------------


def _make_bad(kind: str, path: Path) -> None:
    path.unlink(missing_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = (OLD_STORE / "results.sqlite").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign-sqlite":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes(np.random.default_rng(0).bytes(8192))


BAD_FILES = [
    pytest.param("empty", "an empty file, 0 bytes", id="zero-bytes"),
    pytest.param("truncated", r"truncated: 30720 bytes, its header says 15 pages", id="truncated"),
    pytest.param("foreign-sqlite", r"an SQLite database with other tables \(photos\)", id="foreign-sqlite"),
    pytest.param("random", "not an SQLite database, 8192 bytes", id="random-bytes"),
]


@pytest.mark.parametrize("kind, why", BAD_FILES)
def test_store_refuses_a_file_that_is_not_a_store_and_leaves_it_alone(tmp_path, kind, why):
    path = tmp_path / "results.sqlite"
    _make_bad(kind, path)
    before = path.read_bytes()
    with pytest.raises(NotAStoreError, match=rf"^{re.escape(str(path))} is not a results store \({why}.*\); restore it from a backup") as err:
        Store(path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def _published(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in ("results.sqlite", "writer.lock")}


@pytest.mark.parametrize("kind, why", BAD_FILES)
def test_commands_refuse_a_bad_store_and_rewrite_nothing_published(old_store_dir, capsys, kind, why):
    """The leaderboard CSV/MD and the site's plots stay as they were: nothing is published from it."""
    from harness.cli import main
    from harness.results.leaderboard import write_leaderboard

    with Store(old_store_dir / "results.sqlite") as s:
        write_leaderboard(s, old_store_dir)
    assert any(old_store_dir.glob("site/**/*.png")) and (old_store_dir / "leaderboard_public.csv").stat().st_size > 500
    _make_bad(kind, old_store_dir / "results.sqlite")
    before = _published(old_store_dir)
    for argv in (["leaderboard", str(old_store_dir)], ["leaderboard", str(old_store_dir), "--reveal-private"],
                 ["rescore", str(old_store_dir)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(rf"is not a results store \({why}", err[0]), (argv, err)
        assert "restore it from a backup" in err[0] and str(old_store_dir / "results.sqlite") in err[0]
    assert _published(old_store_dir) == before


# -- extras and superseded runs ------------------------------------------------------------------


def test_extras_round_trip_by_entry_board_and_name(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    store.put_extra(sid, leaderboard="public", name="mia_auc", value=0.61)
    store.put_extra(sid, leaderboard="public", name="per_class", value={"0": [1, 2]})
    store.put_extra(sid, leaderboard="private", name="mia_auc", value=0.5)
    store.put_extra(sid, leaderboard="public", name="mia_auc", value=0.63)  # replaces
    assert store.extras(sid, leaderboard="public") == {"mia_auc": 0.63, "per_class": {"0": [1, 2]}}
    assert store.get_extra(sid, leaderboard="private", name="mia_auc") == 0.5
    assert store.get_extra(sid, leaderboard="private", name="nope", default="-") == "-"
    store.record_score(sid, leaderboard="public", status="ok", final_score=0.1)
    store.clear_scores()
    assert store.extras(sid, leaderboard="public")["mia_auc"] == 0.63  # scores come and go, extras stay


@pytest.mark.parametrize(
    "sid, name, value, message",
    [
        pytest.param(1, "x", {1, 2}, "must be JSON-serialisable", id="not-json"),
        pytest.param(1, "x", float("nan"), "must be JSON-serialisable", id="nan"),
        pytest.param(1, "", 1, "needs a non-empty name", id="no-name"),
        pytest.param(9, "x", 1, "cannot store extra 'x' of submission 9", id="unknown-submission"),
    ],
)
def test_put_extra_rejects_bad_input(store, sub_file, sid, name, value, message):
    store.add_submission(sub_file, team="a")
    with pytest.raises(HarnessError, match=message):
        store.put_extra(sid, leaderboard="public", name=name, value=value)


def test_a_replaced_run_is_kept_as_superseded_with_its_cause(store, sub_file):
    sid = store.add_submission(sub_file, team="a")
    first = store.record_run(sid, leaderboard="public", run_index=0, seed=5, status="sandbox_error", reason="no docker",
                             protocol=1, log="old log")
    ok_run(store, sid, 0, replace=True, cause="sandbox_error: run again")
    (old,) = store.superseded_runs(sid, "public")
    assert (old.id, old.run_index, old.status, old.reason, old.protocol, old.log, old.cause) == \
        (first, 0, Status.SANDBOX_ERROR, "no docker", 1, "old log", "sandbox_error: run again")
    (run,) = store.runs(sid, "public")
    assert run.id != first and run.status is Status.OK and run.protocol == 2
    assert store.superseded_runs(leaderboard="private") == []


def test_run_refuses_a_bad_store_before_anything_is_trained_or_published(tmp_path, capsys):
    from harness.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"include: {Path(__file__).parent / 'data' / 'tiny.yaml'}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "results.sqlite").write_bytes(b"")
    (run_dir / "leaderboard_public.csv").write_text("rank,team\n1,kept\n")
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert "results.sqlite is not a results store (an empty file, 0 bytes)" in capsys.readouterr().err
    assert (run_dir / "leaderboard_public.csv").read_text() == "rank,team\n1,kept\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["leaderboard_public.csv", "results.sqlite", "writer.lock"]
