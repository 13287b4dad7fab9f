"""Leaderboards (CSV, Markdown) and a static HTML site with plots, read from the store only.

Nothing is recomputed here: scores, per-example epsilons and points, run times and accuracies
are what the runner stored (see harness.results.store). The metric's direction comes from
`harness.scoring.metric.HIGHER_IS_BETTER`; the leaderboard never guesses it.

Row order of every board:
1. the calibration row(s): exempt entries (the retrain oracle, "a perfect unlearner at this N"),
   flagged 'calibration', never ranked;
2. ranked rows: status ok with a score, best first, ties share a rank;
3. failed rows (a status other than ok, with its one-line reason);
4. pending rows (no score yet; status 'pending', reason says how many runs are stored).

By default a board shows each team's latest version (harness.results.store.Store.submissions).

The private leaderboard stays private until revealed (`Store.reveal_private()` marks the store,
`write_leaderboard(..., reveal_private=True)` reveals it in one write): until then nothing about it -- no file, no row, no plot, not a team's own
private score -- is written by `write_leaderboard`, and stale private files are removed.

Output layout of `write_leaderboard(store, out_dir)`::

    out_dir/leaderboard_public.csv, leaderboard_public.md
    out_dir/leaderboard_private.csv, leaderboard_private.md      only when revealed
    out_dir/site/index.html                public board, forgetting-vs-utility plot, all versions
    out_dir/site/private.html              only when revealed
    out_dir/site/submissions/<id>.html     one page per submission version
    out_dir/site/submissions/<id>/<board>_<plot>.png
    out_dir/site/img/<board>_scatter.png

The site is self-contained (inline CSS and a small sortable-table script, no network) and is
rebuilt as a whole on each call, so it never keeps pages from an earlier state.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.results import report_plots
from harness.results.lock import writer_lock
from harness.results.store import LEADERBOARDS, Store, SubmissionRecord
from harness.sandbox.protocol import PROTOCOL_VERSION
from harness.statuses import STATUS_DOCS, Status
from harness.timefmt import seconds_text

COLUMNS = (
    "rank",
    "team",
    "name",
    "version",
    "kind",
    "flag",
    "final_score",
    "ci_low",
    "ci_high",
    "forget_quality",
    "retain_ratio",
    "test_ratio",
    "retain_acc",
    "test_acc",
    "forget_acc",
    "median_run_s",
    "worst_run_s",
    "time_cap_s",
    "n_ok",
    "n_runs",
    "old_protocol",
    "status",
    "reason",
    "submission_id",
)
LENS_PREFIX = "lens_"  # a lens's column: lens_<name>, after COLUMNS, one per registered lens
PENDING = "pending"  # shown for a submission that has no score yet (not a run Status)
CALIBRATION = "calibration"
_GROUP_CALIBRATION, _GROUP_RANKED, _GROUP_FAILED, _GROUP_PENDING = range(4)
_LOG_CHARS_ON_PAGE = 8_000
_LOGS_ON_PAGE = 20


def higher_is_better() -> bool:
    """The metric's direction, as the metric declares it (imported late: harness.scoring.metric loads torch)."""
    from harness.scoring import metric

    return bool(metric.HIGHER_IS_BETTER)


def _lenses():
    """The lens registry (imported late: harness.scoring.lenses loads the metric, which loads torch)."""
    from harness.scoring.lenses import LENSES

    return LENSES


def lens_columns() -> list[str]:
    """One column per registered lens, in the registry's order: beside F, never in the ranking."""
    return [f"{LENS_PREFIX}{name}" for name in _lenses().names()]


def board_columns() -> list[str]:
    """The CSV's columns: COLUMNS, then the lenses'."""
    return [*COLUMNS, *lens_columns()]


def _lens_values(stored: dict | None) -> dict[str, float | None]:
    """A stored `lenses` extra as column values: each lens's shown value, None where it was not computed."""
    registry = _lenses()
    out = {}
    for name in registry.names():
        value = (stored or {}).get(name) or {}
        shown = value.get(registry.get(name).column)
        out[f"{LENS_PREFIX}{name}"] = float(shown) if isinstance(shown, (int, float)) else None
    return out


def build_leaderboard(store: Store, *, leaderboard: str = "public", all_versions: bool = False) -> pd.DataFrame:
    """One row per submission (each team's latest version, or every version), in board order."""
    if leaderboard not in LEADERBOARDS:
        raise HarnessError(f"leaderboard must be one of {', '.join(map(repr, LEADERBOARDS))}, got {leaderboard!r}")
    subs = store.submissions(latest_only=not all_versions)
    scores = {s.submission_id: s for s in store.scores(leaderboard=leaderboard)}
    counts = store.run_counts(leaderboard=leaderboard)
    old_protocol = store.old_protocol_entries(leaderboard)
    rows = []
    columns = board_columns()
    for sub in subs:
        score = scores.get(sub.id)
        stored = counts.get(sub.id, {})
        row: dict[str, Any] = {c: None for c in columns}
        row.update(team=sub.team, name=sub.name, version=sub.version, kind=sub.kind, submission_id=sub.id)
        row["flag"] = CALIBRATION if sub.exempt else ""
        if score is None:
            n = sum(stored.values())
            row.update(status=PENDING, reason=f"not scored yet: {n} run(s) stored", n_runs=n, n_ok=stored.get("ok", 0))
        else:
            for key in COLUMNS:
                if key not in ("rank", "team", "name", "version", "kind", "flag", "submission_id") and hasattr(score, key):
                    row[key] = getattr(score, key)
            row["status"] = score.status.value
            row["old_protocol"] = old_protocol.get(sub.id)  # its score rests on runs of this older run protocol
            if score.status is Status.OK:
                from harness.scoring.scores import LENSES_EXTRA

                row.update(_lens_values(store.get_extra(sub.id, leaderboard=leaderboard, name=LENSES_EXTRA)))
        ok = score is not None and score.status is Status.OK and _finite(score.final_score)
        if sub.exempt:
            group = _GROUP_CALIBRATION
        elif ok:
            group = _GROUP_RANKED
        elif score is not None:
            group = _GROUP_FAILED
        else:
            group = _GROUP_PENDING
        row["_group"] = group
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*columns, "_group"])
    if df.empty:
        return df.drop(columns="_group").astype({"rank": "Int64"})
    higher = higher_is_better()
    key = df["final_score"].astype(float)
    df["_key"] = -key if higher else key
    df = df.sort_values(["_group", "_key", "team", "submission_id"], na_position="last", kind="stable")
    ranked = df["_group"] == _GROUP_RANKED
    df["rank"] = pd.array([pd.NA] * len(df), dtype="Int64")
    if ranked.any():
        df.loc[ranked, "rank"] = df.loc[ranked, "_key"].rank(method="min").astype("int64").to_numpy()
    return df.drop(columns=["_group", "_key"]).reset_index(drop=True)


def write_leaderboard(
    store: Store, out_dir: str | Path, *, reveal_private: bool = False, plots: bool = True, publish_logs: bool = False
) -> dict[str, Path]:
    """Write the CSV/Markdown boards and the HTML site; returns the paths written.

    The private board is written when `reveal_private` is true or the store is marked revealed
    (`Store.reveal_private()`, which is what makes a reveal stick for later rebuilds); otherwise
    every private output is removed. `plots=False` skips the PNGs (much faster). Run logs stay
    off the site unless `publish_logs` (a submission's printed output is a channel to the public);
    the organizer's run folder keeps them either way.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reveal = bool(reveal_private) or store.private_revealed
    boards = ("public", "private") if reveal else ("public",)
    written: dict[str, Path] = {}
    frames = {lb: build_leaderboard(store, leaderboard=lb) for lb in boards}
    info = store.competition()
    for lb in LEADERBOARDS:
        csv_path, md_path = out_dir / f"leaderboard_{lb}.csv", out_dir / f"leaderboard_{lb}.md"
        if lb not in boards:
            csv_path.unlink(missing_ok=True)
            md_path.unlink(missing_ok=True)
            continue
        _write_text(csv_path, frames[lb].to_csv(index=False))
        _write_text(md_path, _markdown(frames[lb], leaderboard=lb, info=info))
        written[f"{lb}_csv"], written[f"{lb}_md"] = csv_path, md_path

    site = out_dir / "site"
    tmp = out_dir / f".site-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_site(store, tmp, frames=frames, info=info, plots=plots, logs=publish_logs)
        shutil.rmtree(site, ignore_errors=True)
        os.replace(tmp, site)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    written["site"] = site / "index.html"
    return written


def publish_leaderboard(run_dir: str | Path, *, reveal_private: bool = False, publish_logs: bool = False) -> pd.DataFrame:
    """`unlearn leaderboard`: rebuild a run folder's boards from its store; revealing the private
    board writes the store, so it holds the folder's writer lock. Returns the board shown."""
    run_dir = Path(run_dir)
    db = run_dir / "results.sqlite"
    if not db.is_file():
        raise HarnessError(f"no results store at {db}; pass the run folder of a competition (runs/<name>)")
    lock = writer_lock(run_dir) if reveal_private else contextlib.nullcontext()
    with lock, Store(db, create=False) as store:
        if reveal_private:
            store.reveal_private()
        write_leaderboard(store, run_dir, reveal_private=reveal_private, publish_logs=publish_logs)
        return build_leaderboard(store, leaderboard="private" if reveal_private else "public")


def _write_text(path: Path, text: str) -> None:
    """Replace a file whole, so a reader never sees half a leaderboard."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_leaderboard(df: pd.DataFrame) -> str:
    """A plain-text table for the terminal: the Markdown board's columns, aligned."""
    if df.empty:
        return "(no submissions)"
    ranks = rank_labels(df)
    cells = [[ranks[i] if c == "rank" else _fmt(c, row[c]) + (f" ({row['flag']})" if c == "kind" and row["flag"] else "") for c in _MD_COLUMNS]
             for i, row in df.iterrows()]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(_MD_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_MD_COLUMNS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


# -- Markdown ------------------------------------------------------------------------------------

_MD_COLUMNS = (
    "rank",
    "team",
    "version",
    "kind",
    "final_score",
    "ci_low",
    "ci_high",
    "forget_quality",
    "retain_ratio",
    "test_ratio",
    "forget_acc",
    "median_run_s",
    "worst_run_s",
    "time_cap_s",
    "old_protocol",
    "status",
    "reason",
)


def rank_labels(df: pd.DataFrame) -> pd.Series:
    """The rank as shown: '=2' for a rank that tied scores share, '' for rows never ranked."""
    counts = df["rank"].value_counts()
    return pd.Series(["" if pd.isna(r) else f"={int(r)}" if counts[r] > 1 else str(int(r)) for r in df["rank"]], index=df.index, dtype=object)


def _md_columns() -> tuple[str, ...]:
    """The Markdown board's columns: the lenses' after the utility ratios' and accuracy's."""
    at = _MD_COLUMNS.index("median_run_s")
    return (*_MD_COLUMNS[:at], *lens_columns(), *_MD_COLUMNS[at:])


def _lens_note() -> str:
    registry = _lenses()
    shown = "; ".join(f"{LENS_PREFIX}{n} ({registry.get(n).title}): {registry.get(n).no_difference}" for n in registry.names())
    return ("lens_ columns are other readings of the same runs, beside F and never in the score "
            f"(harness.scoring.lenses); what each reads when nothing differs: {shown}")


def _markdown(df: pd.DataFrame, *, leaderboard: str, info: Any) -> str:
    md_columns = _md_columns()
    lines = [f"# {info.name or 'competition'}: {leaderboard} leaderboard", ""]
    lines += [f"- {line}" for line in _info_lines(info, leaderboard)]
    lines += [
        f"- final score: {'higher' if higher_is_better() else 'lower'} is better; "
        f"rows flagged '{CALIBRATION}' are the retrain oracle (the best to expect at this N), never ranked; "
        "a rank like =2 is shared by tied scores",
        _lens_note(),
    ]
    if df["old_protocol"].notna().any():
        lines.append(f"- a number under old_protocol: that score rests on runs of an older run protocol "
                     f"(now {PROTOCOL_VERSION}); `unlearn run` runs them again")
    lines += [
        "",
    ]
    lines.append("| " + " | ".join(md_columns) + " |")
    lines.append("|" + "|".join("---" for _ in md_columns) + "|")
    ranks = rank_labels(df)
    for i, row in df.iterrows():
        cells = []
        for col in md_columns:
            text = ranks[i] if col == "rank" else _fmt(col, row[col])
            if col == "kind" and row["flag"]:
                text = f"{text} ({row['flag']})"
            cells.append(html.escape(text, quote=False).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _info_lines(info: Any, leaderboard: str) -> list[str]:
    lines = []
    if info.config_hash:
        lines.append(f"config hash {info.config_hash}, code version {info.code_version}")
    cap = info.time_caps.get(leaderboard, {})
    if "time_cap_s" in cap and "median_retrain_s" in cap:
        share = cap.get("fraction", "?")
        share = f"{share:.3g}" if isinstance(share, (int, float)) else share
        budget = f" ({cap['budget']})" if cap.get("budget") else ""
        noise = (f" x {1 + cap['noise_p99']:.3f} (p99 run-time noise of a file's slowest run)"
                 if cap.get("noise_p99") else "")
        lines.append(
            f"time cap {seconds_text(cap['time_cap_s'])} per run = {share}{budget} x median solo retrain "
            f"{seconds_text(cap['median_retrain_s'])} on {cap.get('hardware', 'unknown hardware')}{noise}"
        )
    elif "time_cap_s" in cap or "fixed_s" in cap:
        lines.append(f"time cap {seconds_text(float(cap.get('time_cap_s', cap.get('fixed_s'))))} per run (fixed)")
    return lines


def _fmt(col: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if col in ("median_run_s", "worst_run_s", "time_cap_s", "seconds"):
        return seconds_text(value)
    if col == "peak_mem_mb":
        return f"{float(value):.1f}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


# -- HTML ----------------------------------------------------------------------------------------

# A board is wider than a laptop's screen: it scrolls inside its own box (the page never does),
# the team column stays in view while it scrolls, and a reason wraps within the row it explains.
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td.t, th.t { text-align: left; }
th { background: #f0f0f0; }
table.sortable th { cursor: pointer; user-select: none; vertical-align: bottom; }
.scroll { max-width: 100%; overflow-x: auto; margin: 1em 0; }
.scroll table { margin: 0; }
.scroll td { white-space: nowrap; }
td.reason { white-space: normal; max-width: 40em; overflow-wrap: anywhere; }
.scroll td.reason { min-width: 16em; }
.scroll td.sticky, .scroll th.sticky { position: sticky; left: 0; background: #fff; z-index: 1; }
.scroll th.sticky { background: #f0f0f0; }
tr.calibration td, tr.calibration td.sticky { background: #fff4e0; }
tr.failed td, tr.failed td.sticky { background: #fbeaea; }
tr.pending td { color: #888; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 12px; }
img { max-width: 100%; }
.note { color: #666; font-size: 13px; max-width: 60em; }
"""

# Sorts by a cell's column (data-col), not its position: a failed row's reason spans the score columns.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th) {
    var col = th.getAttribute('data-col');
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-dir') !== 'asc';
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
      function key(row) {
        var c = row.querySelector("td[data-col='" + col + "']");
        if (!c) { return ''; }
        return c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

# The site's board: the CSV's columns, most read first; a row without a score shows its status's
# reason across the score columns, where the eye already is, instead of in a column off-screen.
_SITE_COLUMNS = (
    "rank", "team", "kind", "status", "final_score", "ci_low", "ci_high", "forget_quality", "retain_ratio", "test_ratio",
    "retain_acc", "test_acc", "forget_acc", "median_run_s", "worst_run_s", "n_ok", "n_runs", "time_cap_s", "version",
    "name", "old_protocol",
)  # fmt: skip
_REASON_SPAN = ("final_score", "ci_low", "ci_high", "forget_quality", "retain_ratio", "test_ratio", "retain_acc", "test_acc", "forget_acc")
_HEADERS = {
    "final_score": "final score", "ci_low": "95% CI low", "ci_high": "95% CI high", "forget_quality": "forget quality F",
    "retain_ratio": "retain ratio", "test_ratio": "test ratio", "retain_acc": "retain acc", "test_acc": "test acc",
    "forget_acc": "forget acc", "median_run_s": "median run (s)", "worst_run_s": "worst run (s)", "n_ok": "runs ok",
    "n_runs": "runs", "time_cap_s": "time cap (s)", "old_protocol": "old protocol",
}  # fmt: skip
_TEXT_COLUMNS = ("team", "name", "version", "kind", "flag", "status", "reason")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_SORT_JS}</script>\n</body></html>\n"
    )


def _cell(col: str, value: Any, *, link: str | None = None, text: str | None = None, cls: str = "", span: int = 1) -> str:
    text = html.escape(_fmt(col, value) if text is None else text)
    if link and text:
        text = f"<a href='{html.escape(link)}'>{text}</a>"
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    data_v = f" data-v='{float(value)!r}'" if numeric and _finite(value) else ""
    classes = " ".join(c for c in (cls, "" if numeric else "t") if c)
    attrs = f" class='{classes}'" if classes else ""
    attrs += f" colspan='{span}'" if span > 1 else ""
    return f"<td data-col='{col}'{attrs}{data_v}>{text}</td>"


def _header(col: str, *, sticky: bool = False) -> str:
    classes = " ".join(c for c in ("t" if col in _TEXT_COLUMNS else "", "sticky" if sticky else "") if c)
    attrs = f" class='{classes}'" if classes else ""
    return f"<th data-col='{col}' title='{col}'{attrs}>{html.escape(_heading(col))}</th>"


def _heading(col: str) -> str:
    if col.startswith(LENS_PREFIX) and col[len(LENS_PREFIX):] in _lenses():
        return _lenses().get(col[len(LENS_PREFIX):]).title
    return _HEADERS.get(col, col)


def _same_as_team(team: str, name: str) -> bool:
    """A name that only repeats the team ('copycat' for team copycat, 'finetune' for baseline:finetune)."""
    return name == team or team.endswith(f":{name}")


def _board_table(df: pd.DataFrame, *, link_prefix: str) -> str:
    scored_reasons = df["final_score"].notna() & df["reason"].fillna("").astype(bool)
    at = _SITE_COLUMNS.index("median_run_s")
    site_columns = (*_SITE_COLUMNS[:at], *lens_columns(), *_SITE_COLUMNS[at:])
    columns = [c for c in site_columns if c != "name" or not all(map(_same_as_team, df["team"], df["name"]))]
    if scored_reasons.any():  # a scored row's reason has no empty score cells to fill: it gets a column
        columns.append("reason")
    if df["old_protocol"].isna().all():
        columns.remove("old_protocol")
    head = "".join(_header(c, sticky=c == "team") for c in columns)
    ranks = rank_labels(df)
    body = []
    for i, row in df.iterrows():
        if row["flag"] == CALIBRATION:
            cls = "calibration"
        elif row["status"] == PENDING:
            cls = "pending"
        elif row["status"] != Status.OK.value:
            cls = "failed"
        else:
            cls = ""
        spans_reason = pd.isna(row["final_score"]) and isinstance(row["reason"], str) and bool(row["reason"])
        cells = []
        for c in columns:
            if c in _REASON_SPAN and spans_reason:
                if c == _REASON_SPAN[0]:
                    cells.append(_cell("reason", row["reason"], cls="reason", span=len(_REASON_SPAN)))
                continue
            if c == "reason":
                cells.append(_cell(c, "" if spans_reason else row[c], cls="reason"))  # shown once
            elif c == "rank":
                cells.append(_cell(c, row[c], text=ranks[i]))
            elif c == "team":
                cells.append(_cell(c, row[c], link=f"{link_prefix}{int(row['submission_id'])}.html", cls="sticky"))
            elif c == "kind":
                cells.append(_cell(c, row[c], text=f"{row[c]} ({row['flag']})" if row["flag"] else None))
            else:
                cells.append(_cell(c, row[c]))
        body.append(f"<tr class='{cls}'>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _write_site(store: Store, site: Path, *, frames: dict[str, pd.DataFrame], info: Any, plots: bool, logs: bool) -> None:
    (site / "submissions").mkdir(parents=True)
    boards = tuple(frames)
    competition = info.name or "competition"
    direction = "higher" if higher_is_better() else "lower"
    for lb, df in frames.items():
        parts = [f"<h1>{html.escape(competition)}: {lb} leaderboard</h1>"]
        parts += [f"<p class='note'>{html.escape(line)}</p>" for line in _info_lines(info, lb)]
        parts.append(
            f"<p class='note'>Final score: {direction} is better; a rank like =2 is shared by tied scores. The row "
            f"flagged '{CALIBRATION}' is the retrain oracle scored like a submission: what a perfect unlearner gets at "
            "this number of runs; it is never ranked. Failed submissions are listed at the bottom, each with its status "
            "and the reason in place of its scores. Click a column to sort; the table scrolls sideways.</p>"
        )
        parts.append(f"<p class='note'>{html.escape(_lens_note())}.</p>")
        if "private" in boards:
            other = "private.html" if lb == "public" else "index.html"
            parts.append(f"<p><a href='{other}'>{'private' if lb == 'public' else 'public'} leaderboard</a></p>")
        parts.append(_board_table(df, link_prefix="submissions/"))
        if plots:
            parts.append(_scatter(df, site / "img" / f"{lb}_scatter.png", rel=f"img/{lb}_scatter.png"))
        if lb == "public":
            every = build_leaderboard(store, leaderboard=lb, all_versions=True)
            if len(every) > len(df):
                parts.append("<details><summary>All versions</summary>")
                parts.append(_board_table(every, link_prefix="submissions/"))
                parts.append("</details>")
            parts.append("<h2>Statuses</h2><table><tbody>")
            parts += [f"<tr><td class='t'>{s.value}</td><td class='t'>{html.escape(d)}</td></tr>" for s, d in STATUS_DOCS.items()]
            parts.append(f"<tr><td class='t'>{PENDING}</td><td class='t'>no score stored yet (runs in progress or not started)</td></tr>")
            parts.append("</tbody></table>")
        page = "index.html" if lb == "public" else "private.html"
        (site / page).write_text(_page(f"{competition}: {lb} leaderboard", "\n".join(parts)))

    refs = {lb: store.references(leaderboard=lb) for lb in boards}
    ref_confs: dict[str, np.ndarray | None] = {}
    for sub in store.submissions():
        parts = [_submission_header(sub)]
        for lb in boards:
            parts.append(_submission_section(store, sub, lb, site=site, refs=refs[lb], ref_confs=ref_confs, info=info, plots=plots,
                                               logs=logs))
        (site / "submissions" / f"{sub.id}.html").write_text(_page(f"{sub.team}, version {sub.version}: {competition}", "\n".join(parts)))


def _scatter(df: pd.DataFrame, path: Path, *, rel: str) -> str:
    scored = df[df["forget_quality"].notna() & df["retain_ratio"].notna() & df["test_ratio"].notna()]
    if scored.empty:
        return "<p class='note'>No scored submission yet: no forgetting-vs-utility plot.</p>"
    report_plots.forgetting_vs_utility(
        labels=list(scored["team"]),
        forget_quality=scored["forget_quality"].astype(float).to_numpy(),
        utility=(scored["retain_ratio"].astype(float) * scored["test_ratio"].astype(float)).to_numpy(),
        calibration=list(scored["flag"] == CALIBRATION),
        path=path,
    )
    return f"<h2>Forgetting vs utility</h2><img src='{rel}' alt='forgetting quality against utility'>"


def _submission_header(sub: SubmissionRecord) -> str:
    flag = " (calibration: exempt from the time cap, never ranked)" if sub.exempt else ""
    file = "" if _same_as_team(sub.team, sub.name) else f"file {html.escape(sub.name)}, "
    return (
        f"<p><a href='../index.html'>&larr; leaderboard</a></p>"
        f"<h1>{html.escape(sub.team)}</h1>"
        f"<p class='note'>{file}version {sub.version}, {sub.kind}{flag}, added {html.escape(sub.added_at)}</p>"
    )


def _submission_section(
    store: Store, sub: SubmissionRecord, lb: str, *, site: Path, refs: Any, ref_confs: dict, info: Any, plots: bool,
    logs: bool = False,
) -> str:
    parts = [f"<h2>{lb} leaderboard</h2>"]
    score = store.score(sub.id, leaderboard=lb)
    runs = store.runs(sub.id, leaderboard=lb)
    if score is None and not runs:
        return parts[0] + "<p class='note'>Not run on this leaderboard.</p>"
    if score is not None:
        fields = [
            "status", "reason", "final_score", "ci_low", "ci_high", "forget_quality", "retain_ratio", "test_ratio",
            "retain_acc", "test_acc", "forget_acc", "noise_floor", "n_models", "n_runs", "n_ok",
            "median_run_s", "worst_run_s", "time_cap_s", "metric_version", "scored_at",
        ]  # fmt: skip
        rows = "".join(
            f"<tr><th class='t'>{f}</th>{_cell(f, getattr(score, f).value if f == 'status' else getattr(score, f), cls='reason' if f == 'reason' else '')}</tr>"
            for f in fields
        )
        parts.append(f"<table><tbody>{rows}</tbody></table>")
    else:
        parts.append(f"<p class='note'>Not scored yet: {len(runs)} run(s) stored.</p>")
    lens_values = None
    if score is not None and score.status is Status.OK:
        from harness.scoring.scores import LENSES_EXTRA

        lens_values = store.get_extra(sub.id, leaderboard=lb, name=LENSES_EXTRA)
        parts.append(_lens_table(lens_values))
    if plots:
        parts.append(_submission_plots(store, sub, lb, score=score, runs=runs, site=site, refs=refs, ref_confs=ref_confs, info=info,
                                       lens_values=lens_values))
    parts.append(_runs_table(runs, logs=logs))
    return "\n".join(parts)


def _lens_table(values: dict | None) -> str:
    """Every lens's numbers for an entry, with what each reads when nothing differs."""
    if not values:
        return "<p class='note'>No lenses stored for this score; `unlearn rescore` computes them.</p>"
    registry = _lenses()
    rows = []
    for name in registry.names():
        lens, value = registry.get(name), values.get(name)
        if value is None:
            text = "not computed for this score; `unlearn rescore` computes it"
        elif "unavailable" in value:
            text = f"unavailable: {value['unavailable']}"
        else:
            shown = {k: v for k, v in value.items() if k not in ("per_example", "roc", "per_run")}
            text = "; ".join(f"{k} {_lens_text(v)}" for k, v in shown.items())
        rows.append(f"<tr><th class='t'>{html.escape(lens.title)}</th><td class='t reason'>{html.escape(text)}</td>"
                    f"<td class='t reason'>no difference: {html.escape(lens.no_difference)}</td></tr>")
    return ("<h3>Lenses: other readings of the same runs, beside F (never in the score)</h3>"
            f"<table><tbody>{''.join(rows)}</tbody></table>")


def _lens_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_lens_text(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4f}"
    return "None" if value is None else str(value)


def _submission_plots(store, sub, lb, *, score, runs, site, refs, ref_confs, info, lens_values=None) -> str:
    out_dir = site / "submissions" / str(sub.id)
    parts = []

    def add(title: str, name: str, draw) -> None:
        try:
            made = draw(out_dir / f"{lb}_{name}.png")
        except HarnessError as exc:
            parts.append(f"<p class='note'>{html.escape(title)}: not available ({html.escape(str(exc))})</p>")
            return
        if made is None:
            return
        parts.append(f"<h3>{html.escape(title)}</h3><img src='{sub.id}/{lb}_{name}.png' alt='{html.escape(title)}'>")

    arrays = store.score_arrays(sub.id, leaderboard=lb) if score is not None else {}
    eps = arrays.get("eps")
    if eps is not None:
        from harness.scoring.metric import EPSILON_CAP  # late: the metric loads torch

        add("Per-example epsilon and points", "eps", lambda p: report_plots.epsilon_histogram(eps, arrays.get("points"), p, cap=EPSILON_CAP))
        at_cap = int(np.count_nonzero(np.asarray(eps) >= EPSILON_CAP))
        if at_cap:
            parts.append(f"<p class='note'>{at_cap} of {np.asarray(eps).size} forget examples are at epsilon {EPSILON_CAP:g} "
                         f"(their own bar, beside the histogram). {html.escape(report_plots.CAP_EXPLAINED)}</p>")

    def confs_plot(path: Path):
        if lb not in ref_confs:
            ref_confs[lb] = store.reference_confs(leaderboard=lb)
        retrained = ref_confs[lb]
        _, unlearned = store.run_confs(sub.id, leaderboard=lb)
        if retrained is None or unlearned.size == 0:
            return None
        if unlearned.shape[1] != retrained.shape[1] or unlearned.shape[1] != eps.size:
            raise HarnessError(
                f"forget-set sizes differ: runs {unlearned.shape[1]}, references {retrained.shape[1]}, epsilons {eps.size}"
            )
        return report_plots.confidence_distributions(unlearned, retrained, eps, path)

    if eps is not None:
        add("Unlearned vs retrained confidences: most and least forgotten examples", "confs", confs_plot)

    if lens_values and eps is not None:
        registry = _lenses()
        per_example = {}
        for name in registry.names():
            for key, values in ((lens_values.get(name) or {}).get("per_example") or {}).items():
                if key != "pvalue":  # the KS p-value is the statistic's, on another scale
                    per_example[f"{registry.get(name).title}: {key}"] = values
        if per_example:
            add("Lenses per forget example, against the official epsilon", "lenses",
                lambda p: report_plots.lens_examples(per_example, eps, p))
        lira = lens_values.get("lira") or {}
        if "roc" in lira:
            add("LiRA-style attack: ROC per (example, model) pair", "attack",
                lambda p: report_plots.attack_roc(lira["roc"]["fpr"], lira["roc"]["tpr"], p, auc=lira["auc"]))

    ok_runs = [r for r in runs if r.status is Status.OK]
    if ok_runs:
        unlearned = {k: np.array([getattr(r, f"{k}_acc") for r in ok_runs], dtype=np.float64) for k in ("retain", "test", "forget")}
        retrained = {} if refs is None else {"retain": refs.retain_acc, "test": refs.test_acc, "forget": refs.forget_acc}
        add("Accuracy: unlearned runs vs retrained models", "accs", lambda p: report_plots.accuracy_comparison(unlearned, retrained, p))
    if runs:
        cap = score.time_cap_s if score is not None and score.time_cap_s is not None else info.time_caps.get(lb, {}).get("time_cap_s")
        note = " (exempt from the cap)" if sub.exempt else ""
        add(
            f"Run times against the cap{note}",
            "times",
            lambda p: report_plots.run_times([r.run_index for r in runs], [r.seconds for r in runs], [r.status.value for r in runs], cap, p),
        )
    return "\n".join(parts)


def _runs_table(runs: list, *, logs: bool = False) -> str:
    if not runs:
        return ""
    cols = ("run_index", "seed", "status", "reason", "seconds", "peak_mem_mb", "retain_acc", "test_acc", "forget_acc")
    head = "".join(_header(c) for c in cols)
    body = []
    for r in runs:
        cls = "" if r.status is Status.OK else "failed"
        cells = "".join(_cell(c, r.status.value if c == "status" else getattr(r, c), cls="reason" if c == "reason" else "") for c in cols)
        body.append(f"<tr class='{cls}'>{cells}</tr>")
    parts = [f"<h3>Runs</h3><div class='scroll'><table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"]
    if not logs:
        return "\n".join(parts)
    shown = [r for r in runs if r.status is not Status.OK and r.log][:_LOGS_ON_PAGE]
    first_ok = next((r for r in runs if r.status is Status.OK and r.log), None)
    if first_ok is not None:
        shown.append(first_ok)
    for r in shown:
        log = r.log if len(r.log) <= _LOG_CHARS_ON_PAGE else "[...]\n" + r.log[-_LOG_CHARS_ON_PAGE:]
        parts.append(
            f"<details><summary>log of run {r.run_index} ({r.status.value})</summary><pre>{html.escape(log)}</pre></details>"
        )
    return "\n".join(parts)
