import re

import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.results.leaderboard import board_columns, build_leaderboard, format_leaderboard, write_leaderboard
from harness.results.store import Store
from harness.scoring import metric

S, N = 24, 6  # forget examples, runs / reference models
PRIVATE_MARKER = "zz-private-only-marker"


@pytest.fixture(params=[True, False], ids=["higher-better", "lower-better"])
def direction(request, monkeypatch):
    """Both directions the metric could declare; the board must follow it."""
    monkeypatch.setattr(metric, "HIGHER_IS_BETTER", request.param)
    return request.param


@pytest.fixture
def higher(monkeypatch):
    monkeypatch.setattr(metric, "HIGHER_IS_BETTER", True)


def _file(tmp_path, name, body="pass"):
    path = tmp_path / "subs" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"# {name}\n{body}\n")
    return path


def _scored(store, sid, score, *, board="public", reason="", rng, status="ok"):
    for i in range(N):
        store.record_run(
            sid, leaderboard=board, run_index=i, seed=i, status="ok", seconds=1.0 + rng.random(), peak_mem_mb=10.0,
            retain_acc=0.9, test_acc=0.8, forget_acc=0.75, confs=rng.normal(size=S), log=f"run {i} ok",
        )  # fmt: skip
    store.record_score(
        sid, leaderboard=board, status=status, reason=reason, final_score=score, forget_quality=score * 1.5,
        ci_low=score - 0.01, ci_high=score + 0.01, retain_ratio=0.95, test_ratio=0.9, retain_acc=0.9, test_acc=0.8,
        forget_acc=0.75, n_runs=N, n_ok=N, median_run_s=1.5, worst_run_s=2.0, time_cap_s=3.0, metric_version=1,
        example_eps=rng.uniform(0, 3, size=S), example_points=rng.choice([0.0, 0.5, 1.0], size=S),
    )  # fmt: skip


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "run" / "results.sqlite") as s:
        populate(s, tmp_path)
        yield s


def populate(s, tmp_path, *, full=True):
    """oracle (calibration), three ranked teams with a tie, a team with two versions, a failure, a pending one.

    `full=False` keeps the oracle, alpha's two versions and the failure (fewer plots to draw).
    """
    rng = np.random.default_rng(0)
    s.record_competition(config={"name": "demo"}, config_hash="h1", code_version="0.1.0", seeds={"seed": 0})
    s.record_time_cap({"time_cap_s": 3.0, "median_retrain_s": 15.0, "fraction": 0.2, "hardware": "test cpu"})
    for board in ("public", "private"):
        s.record_references(
            leaderboard=board, cache_key="k", confs=rng.normal(size=(N, S)), retain_acc=np.full(N, 0.95),
            test_acc=np.full(N, 0.88), forget_acc=np.full(N, 0.85), train_seconds=np.full(N, 15.0),
        )  # fmt: skip
    oracle = s.add_submission(_file(tmp_path, "retrain"), team="baseline:retrain", kind="oracle", exempt=True)
    _scored(s, oracle, 0.18, rng=rng)
    old_a = s.add_submission(_file(tmp_path, "a"), team="alpha")
    _scored(s, old_a, 0.50, rng=rng)
    new_a = s.add_submission(_file(tmp_path, "a", body="x = 2"), team="alpha")
    _scored(s, new_a, 0.10, rng=rng)
    _scored(s, new_a, 0.7777, board="private", reason=PRIVATE_MARKER, rng=rng)
    if full:
        bravo = s.add_submission(_file(tmp_path, "b"), team="bravo")
        _scored(s, bravo, 0.15, rng=rng)
        charlie = s.add_submission(_file(tmp_path, "c"), team="<b>charlie</b>")
        _scored(s, charlie, 0.10, rng=rng)
    slow = s.add_submission(_file(tmp_path, "slow"), team="baseline:slow", kind="baseline")
    s.record_run(slow, leaderboard="public", run_index=0, seed=0, status="timeout", reason="took 9.1 s > cap 3.0 s", seconds=9.1, log="Traceback\nKilled")
    s.record_score(slow, leaderboard="public", status="timeout", reason="run 0 took 9.1 s > cap 3.0 s", n_runs=1, n_ok=0, time_cap_s=3.0)
    if not full:
        return
    pending = s.add_submission(_file(tmp_path, "p"), team="papa")
    s.record_run(pending, leaderboard="public", run_index=0, seed=0, status="ok", retain_acc=0.9, test_acc=0.8, forget_acc=0.7, confs=np.zeros(S))


def test_build_leaderboard_orders_calibration_ranked_failed_pending(store, direction):
    df = build_leaderboard(store)
    assert list(df.columns) == board_columns()
    best_first = ["bravo", "<b>charlie</b>", "alpha"] if direction else ["<b>charlie</b>", "alpha", "bravo"]
    ranked = df[df["rank"].notna()]
    assert sorted(ranked["team"]) == sorted(best_first)
    assert df["team"].iloc[0] == "baseline:retrain" and df["flag"].iloc[0] == "calibration" and pd.isna(df["rank"].iloc[0])
    assert list(df["team"].iloc[-2:]) == ["baseline:slow", "papa"]
    assert list(df["status"].iloc[-2:]) == ["timeout", "pending"]
    assert df["reason"].iloc[-2] == "run 0 took 9.1 s > cap 3.0 s"
    assert df["reason"].iloc[-1] == "not scored yet: 1 run(s) stored"
    scores = ranked["final_score"].tolist()
    assert scores == sorted(scores, reverse=direction)


def test_build_leaderboard_ties_share_a_rank(store, direction):
    df = build_leaderboard(store).set_index("team")
    expected = {"bravo": 1, "alpha": 2, "<b>charlie</b>": 2} if direction else {"alpha": 1, "<b>charlie</b>": 1, "bravo": 3}
    assert {t: int(df.loc[t, "rank"]) for t in expected} == expected


def test_build_leaderboard_latest_version_by_default(store, higher):
    latest = build_leaderboard(store)
    every = build_leaderboard(store, all_versions=True)
    assert latest["team"].tolist().count("alpha") == 1
    assert latest.set_index("team").loc["alpha", "final_score"] == pytest.approx(0.10)
    assert sorted(every[every["team"] == "alpha"]["final_score"]) == pytest.approx([0.10, 0.50])


def test_build_leaderboard_private_board_reads_private_scores(store, higher):
    df = build_leaderboard(store, leaderboard="private")
    alpha = df.set_index("team").loc["alpha"]
    assert alpha["final_score"] == pytest.approx(0.7777) and alpha["rank"] == 1
    assert (df[df["team"] != "alpha"]["status"] == "pending").all()


def test_build_leaderboard_rejects_unknown_board(store):
    with pytest.raises(HarnessError, match="leaderboard must be one of 'public', 'private', got 'final'"):
        build_leaderboard(store, leaderboard="final")


def test_build_leaderboard_empty_store(tmp_path, higher):
    with Store(tmp_path / "r.sqlite") as s:
        df = build_leaderboard(s)
    assert df.empty and list(df.columns) == board_columns()


def _text_outputs(out_dir):
    return {p: p.read_text() for p in out_dir.rglob("*") if p.suffix in (".csv", ".md", ".html")}


def test_write_leaderboard_keeps_private_private_until_revealed(store, tmp_path, higher):
    out = tmp_path / "out"
    write_leaderboard(store, out, plots=False)
    texts = _text_outputs(out)
    assert {p.name for p in texts if p.suffix != ".html"} == {"leaderboard_public.csv", "leaderboard_public.md"}
    assert not (out / "site" / "private.html").exists()
    leaks = [p.name for p, t in texts.items() if PRIVATE_MARKER in t or "0.7777" in t or "private leaderboard" in t]
    assert leaks == []

    write_leaderboard(store, out, reveal_private=True, plots=False)
    assert PRIVATE_MARKER in (out / "leaderboard_private.md").read_text()
    assert PRIVATE_MARKER in (out / "site" / "private.html").read_text()
    alpha_page = next(p for p, t in _text_outputs(out).items() if "submissions" in p.parts and PRIVATE_MARKER in t)
    assert "private leaderboard" in alpha_page.read_text()

    write_leaderboard(store, out, plots=False)  # not revealed in the store: the private outputs go away again
    assert not (out / "leaderboard_private.csv").exists() and not (out / "site" / "private.html").exists()
    assert not any(PRIVATE_MARKER in t for t in _text_outputs(out).values())

    store.reveal_private()
    write_leaderboard(store, out, plots=False)
    assert (out / "leaderboard_private.csv").exists()


def test_write_leaderboard_site_pages_reference_existing_pngs(tmp_path, higher):
    store = Store(tmp_path / "run" / "results.sqlite")
    populate(store, tmp_path, full=False)
    out = tmp_path / "out"
    written = write_leaderboard(store, out, publish_logs=True)
    site = out / "site"
    assert written["site"] == site / "index.html"
    pages = [site / "index.html", *sorted((site / "submissions").glob("*.html"))]
    assert len(pages) == 1 + len(store.submissions())
    for page in pages:
        text = page.read_text()
        assert "http://" not in text and "https://" not in text  # self-contained
        for ref in re.findall(r"(?:src|href)='([^']+)'", text):
            assert (page.parent / ref).is_file(), f"{page.name} links to missing {ref}"
    index = (site / "index.html").read_text()
    assert "img/public_scatter.png" in index and "<table class='sortable'>" in index and "<script>" in index
    alpha_page = (site / "submissions" / "3.html").read_text()
    for plot in ("eps", "confs", "accs", "times"):
        assert f"3/public_{plot}.png" in alpha_page
    slow_page = (site / "submissions" / "4.html").read_text()
    assert "timeout" in slow_page and "Killed" in slow_page and "4/public_times.png" in slow_page
    store.close()


def test_write_leaderboard_escapes_team_names(store, tmp_path, higher):
    out = tmp_path / "out"
    write_leaderboard(store, out, plots=False)
    index = (out / "site" / "index.html").read_text()
    assert "<b>charlie</b>" not in index and "&lt;b&gt;charlie&lt;/b&gt;" in index


def test_write_leaderboard_markdown_flags_calibration_row(store, tmp_path, higher):
    out = tmp_path / "out"
    write_leaderboard(store, out, plots=False)
    lines = (out / "leaderboard_public.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[1].startswith("|  | baseline:retrain |") and "(calibration)" in table[1]
    assert "time cap 3.00 s per run = 0.2 x median solo retrain 15.0 s on test cpu" in "\n".join(lines)
    csv = pd.read_csv(out / "leaderboard_public.csv")
    assert csv["team"].iloc[0] == "baseline:retrain" and csv["status"].iloc[-1] == "pending"


def test_format_leaderboard_aligns_a_text_table(store, higher):
    lines = format_leaderboard(build_leaderboard(store)).splitlines()
    assert lines[0].split()[:3] == ["rank", "team", "version"]
    assert "oracle (calibration)" in lines[1] and lines[-1].split()[0] == "papa"
    assert format_leaderboard(build_leaderboard(store).iloc[:0]) == "(no submissions)"


def test_run_logs_stay_off_the_public_site_unless_the_organizer_publishes_them(store, tmp_path, higher):
    out = tmp_path / "out"
    write_leaderboard(store, out, plots=False)
    pages = "".join(p.read_text() for p in (out / "site").rglob("*.html"))
    assert "<h3>Runs</h3>" in pages and "run 0 ok" not in pages  # statuses and reasons only
    write_leaderboard(store, out, plots=False, publish_logs=True)
    pages = "".join(p.read_text() for p in (out / "site").rglob("*.html"))
    assert "run 0 ok" in pages
