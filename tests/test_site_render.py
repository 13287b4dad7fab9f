"""The site as a participant reads it: a real competition's pages rendered in headless Chromium at
1400 px, measured in the page (the board scrolls in its own box, failed rows' reasons in view,
tied ranks marked, titles that say each name once, epsilon 50 explained), and its plots measured
in matplotlib (labels that overlap nothing, the cap's own bar, text and legends readable).

Debian's `chromium` renders the pages (.ci/run installs it); under CI=true a missing chromium
fails the page tests instead of skipping them.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from matplotlib.legend import Legend
from matplotlib.text import Annotation, Text

from harness.compete.runner import run_competition
from harness.config import load_config
from harness.results import report_plots
from harness.results.leaderboard import build_leaderboard
from harness.results.store import Store
from harness.scoring.metric import EPSILON_CAP
from harness.statuses import Status

TINY = Path(__file__).parent / "data" / "tiny.yaml"
WIDTH, HEIGHT = 1400, 900
MIN_TEXT_PX = 12.0

# Leaves the weights as they came: the same evaluations as the do_nothing baseline, so a tied score.
COPYCAT = """
def unlearning(net, retain_loader, forget_loader, val_loader):
    pass
"""
# Fails three frames deep, as participants' code does: a long reason (the chain from unlearning()).
DEEP_FAILURE = """
def forward_with_mixup(net, batch):
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x1024 and 512x10)")


def train_one_epoch(net, loader):
    for batch in loader:
        forward_with_mixup(net, batch)


def unlearning(net, retain_loader, forget_loader, val_loader):
    train_one_epoch(net, retain_loader)
"""

# Appended to a copy of a page: measures it as laid out and leaves the numbers in the DOM that
# `chromium --dump-dom` prints. It reads the page as a reader would (the first table with a header
# row, headers and cells by their text), so it measures any layout of the board, not only this one.
PROBE = """
<script>
(function () {
  function scroller(el) {
    for (var e = el.parentElement; e; e = e.parentElement) {
      var o = getComputedStyle(e).overflowX;
      if (o === 'auto' || o === 'scroll') { return e; }
    }
    return null;
  }
  function box(r) { return r && {left: r.left, right: r.right}; }
  var view = document.documentElement.clientWidth, table = document.querySelector('table thead'), out = {
    view: view, page_width: document.documentElement.scrollWidth, title: document.title,
    h1: (document.querySelector('h1') || {}).textContent || '', text: document.body.innerText, rows: []};
  if (table) {
    table = table.parentElement;
    var holder = scroller(table);
    out.table = box(table.getBoundingClientRect());
    out.scroll_box = holder && box(holder.getBoundingClientRect());
    var heads = Array.prototype.map.call(table.tHead.rows[0].cells, function (th) { return th.textContent.trim(); });
    Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
      var rank = heads.indexOf('rank');
      out.rows.push({rank: rank < 0 ? null : tr.cells[rank].textContent.trim(), cls: tr.className,
        cells: Array.prototype.map.call(tr.cells, function (td) {
          var r = td.getBoundingClientRect();
          return {text: td.textContent.trim(), left: r.left, right: r.right, clipped: td.scrollWidth > td.clientWidth + 1,
                  font_px: parseFloat(getComputedStyle(td).fontSize)};
        })});
    });
  }
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def require_chromium() -> str:
    """Skip where chromium is missing, except under CI, which must render the site for real."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI renders the site in headless Chromium, and chromium is not installed: apt-get install chromium")
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """A tiny competition scored end to end: the oracle, finetune, do_nothing, a copy of do_nothing
    (a tie) and a submission that fails deep in its code (a long reason). No sandbox: the site is
    under test here, the sandbox has tests of its own, and this saves a sandbox start per entry."""
    root = tmp_path_factory.mktemp("site")
    subs = root / "submissions"
    subs.mkdir()
    (subs / "copycat.py").write_text(textwrap.dedent(COPYCAT))
    (subs / "my_team_submission_v3.py").write_text(textwrap.dedent(DEEP_FAILURE))
    cfg = load_config(TINY, overrides={"output.dir": str(root / "runs"), "recipe.epochs": 3})  # 2 epochs learn nothing at all
    run_competition(cfg, submissions_dir=subs, baselines=("do_nothing", "finetune", "retrain"), unsafe_no_sandbox=True,
                    progress=False, log=lambda _: None)  # fmt: skip
    store = Store(cfg.run_dir / "results.sqlite", create=False)
    yield store, cfg.run_dir / "site"
    store.close()


def render(chromium: str, page: Path, out_dir: Path) -> dict:
    """The page's measurements at WIDTH x HEIGHT, from a probed copy beside it (its links still resolve)."""
    probed = page.with_name(f".probe-{page.name}")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    command = [chromium, "--headless=new", "--no-sandbox",  # --no-sandbox: Chromium's own sandbox refuses root
               "--disable-gpu", f"--user-data-dir={out_dir / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
               "--dump-dom", probed.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    probed.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no measurements (exit {done.returncode}): {done.stdout[:1000]} {done.stderr[-1000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def pages(competition, tmp_path_factory):
    """The index and finetune's page, as Chromium lays them out."""
    chromium = require_chromium()
    store, site = competition
    (finetune,) = [s for s in store.submissions() if s.team == "baseline:finetune"]
    out = tmp_path_factory.mktemp("chromium")
    return {"index": render(chromium, site / "index.html", out),
            "submission": render(chromium, site / "submissions" / f"{finetune.id}.html", out)}


def board(store):
    return build_leaderboard(store)


# -- the pages -------------------------------------------------------------------------------------

def test_site_pages_never_grow_wider_than_a_1400_px_window(pages):
    for page, got in pages.items():
        assert got["page_width"] <= got["view"], f"the {page} page is {got['page_width']} px wide in a {got['view']} px window"


def test_site_board_scrolls_in_its_own_box(pages):
    got = pages["index"]
    assert got["scroll_box"] is not None, "the board sits in no box that scrolls sideways: a wide board widens the page"
    assert 0 <= got["scroll_box"]["left"] and got["scroll_box"]["right"] <= got["view"]


def test_site_failed_rows_show_their_whole_reason_in_view(pages, competition):
    """Each failed row's reason, whole (the stored text), inside the window without scrolling the board."""
    store, _ = competition
    df = board(store)
    failed = df[df["status"] != Status.OK.value]
    assert len(failed) and failed["reason"].str.len().max() > 120, "the fixture must hold a failure with a long reason"
    got = pages["index"]
    rows = {row["cells"][1]["text"]: row for row in got["rows"]}  # the team is the second column
    visible = got["scroll_box"] or {"left": 0, "right": got["view"]}
    for team, reason in zip(failed["team"], failed["reason"]):
        cells = [c for c in rows[team]["cells"] if c["text"] == reason]
        assert cells, f"{team}'s row shows no cell holding its reason {reason!r}"
        (cell,) = cells
        assert visible["left"] <= cell["left"] and cell["right"] <= min(visible["right"], got["view"]), (
            f"{team}'s reason lies at x = {cell['left']:.0f}..{cell['right']:.0f} px, outside the visible {visible}"
        )
        assert not cell["clipped"] and cell["font_px"] >= MIN_TEXT_PX


def test_site_tied_scores_show_a_shared_rank(pages, competition):
    store, _ = competition
    df = board(store)
    ranked = df[df["rank"].notna()]
    ties = [list(group["team"]) for _, group in ranked.groupby("final_score") if len(group) > 1]
    assert ["baseline:do_nothing", "copycat"] in [sorted(t) for t in ties], "do_nothing and its copy must tie"
    shown = {row["cells"][1]["text"]: row["rank"] for row in pages["index"]["rows"]}
    for teams in ties:
        labels = {shown[t] for t in teams}
        assert len(labels) == 1, f"tied teams {teams} show ranks {labels}"
        (label,) = labels
        assert label.startswith("=") or "tie" in label, f"tied teams {teams} show rank {label!r}, not marked as a tie"
    alone = ranked[~ranked["team"].isin([t for group in ties for t in group])]
    assert all(shown[t] == str(int(r)) for t, r in zip(alone["team"], alone["rank"]))


def test_site_titles_do_not_repeat_a_name(pages):
    for page, where in itertools.product(pages, ("title", "h1")):
        words = re.findall(r"[A-Za-z0-9_]+", pages[page][where])
        repeated = {w for w in words if words.count(w) > 1}
        assert not repeated, f"the {page} page's {where} {pages[page][where]!r} repeats {sorted(repeated)}"


def test_site_explains_epsilon_50_as_the_organizers_cap(pages, competition):
    store, _ = competition
    (finetune,) = [s for s in store.submissions() if s.team == "baseline:finetune"]
    eps = store.score_arrays(finetune.id, leaderboard="public")["eps"]
    assert (eps >= EPSILON_CAP).any(), "the page under test must hold examples at the cap"
    text = " ".join(pages["submission"]["text"].split())
    assert "organizers' cap" in text and "perfectly separated" in text and "0 points" in text


# -- the plots -------------------------------------------------------------------------------------

def scatter_inputs(store):
    df = board(store)
    scored = df[df["forget_quality"].notna()]
    return (list(scored["team"]), scored["forget_quality"].astype(float).to_numpy(),
            (scored["retain_ratio"] * scored["test_ratio"]).astype(float).to_numpy(), list(scored["flag"] == "calibration"))


def crowded():
    """Fourteen teams in a cluster, two of them on the same point."""
    rng = np.random.default_rng(1)
    f, u = rng.normal(0.05, 0.01, 14), rng.normal(0.9, 0.02, 14)
    f[13], u[13] = f[12], u[12]
    return [f"team_{c * 3}_long_name" for c in "abcdefghijklmn"], f, u, [i == 0 for i in range(14)]


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


@pytest.mark.parametrize("case", ["real board", "crowded"])
def test_forgetting_vs_utility_labels_overlap_no_label_marker_or_edge(competition, case):
    labels, f, u, cal = scatter_inputs(competition[0]) if case == "real board" else crowded()
    fig = report_plots.forgetting_vs_utility_figure(labels, f, u, cal)
    renderer = drawn(fig)
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text()]
    names = {t.get_text() for t in texts}
    assert names == set(labels) or names == {str(i + 1) for i in range(len(labels))}, f"labels drawn: {sorted(names)}"
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text alone: an Annotation adds its leader line
    for (a, box_a), (b, box_b) in itertools.combinations(zip(texts, boxes), 2):
        assert not box_a.overlaps(box_b), f"labels {a.get_text()!r} and {b.get_text()!r} overlap"
    area = ax.get_window_extent(renderer)
    markers = ax.transData.transform(np.column_stack([u, f]))
    for text, box in zip(texts, boxes):
        assert area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1, f"{text.get_text()!r} leaves the axes"
        inside = [(x, y) for x, y in markers if box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1]
        assert not inside, f"label {text.get_text()!r} covers a marker"
    far = [t for t in texts if isinstance(t, Annotation) and np.hypot(*t.xyann) * fig.dpi / 72 > 20]
    assert all(t.arrow_patch is not None for t in far), "a label set away from its point has no leader line"


def test_epsilon_figure_gives_the_cap_its_own_bar(competition):
    """Every scored entry's epsilons: the histogram covers only those below 50, the cap's count is
    its own bar on its own scale; the fixture has an entry with both kinds (finetune)."""
    store, _ = competition
    mixed = 0
    for sub in store.submissions():
        arrays = store.score_arrays(sub.id, leaderboard="public")
        if "eps" not in arrays:
            continue
        eps = arrays["eps"]
        below, at_cap = eps[eps < EPSILON_CAP], int((eps >= EPSILON_CAP).sum())
        fig = report_plots.epsilon_figure(eps, arrays.get("points"), cap=EPSILON_CAP)
        drawn(fig)
        axes = {ax.get_label(): ax for ax in fig.axes}
        main = axes["epsilon"]
        assert main.get_xlim()[1] < EPSILON_CAP / 2, f"{sub.team}: the histogram spans {main.get_xlim()}, squashed by the cap"
        heights = [p.get_height() for p in main.patches]
        assert sum(heights) == below.size, f"{sub.team}: the histogram counts {sum(heights)} examples, {below.size} lie below the cap"
        assert "epsilon at cap" in axes, f"{sub.team}: the {at_cap} examples at the cap have no bar of their own"
        assert [p.get_height() for p in axes["epsilon at cap"].patches] == [at_cap]
        if below.size and at_cap:
            mixed += 1
            assert max(heights) >= 0.5 * main.get_ylim()[1], f"{sub.team}: the tallest bar below the cap is squashed flat"
        words = " ".join(t.get_text() for t in fig.findobj(Text))
        assert "cap" in words and "separated" in words
    assert mixed, "no entry has epsilons both below and at the cap"


def site_figures(store):
    """Every figure the site draws for the finetune entry, and the scatter, from the stored results."""
    (sub,) = [s for s in store.submissions() if s.team == "baseline:finetune"]
    arrays = store.score_arrays(sub.id, leaderboard="public")
    runs = store.runs(sub.id, leaderboard="public")
    refs = store.references(leaderboard="public")
    _, unlearned = store.run_confs(sub.id, leaderboard="public")
    accs = {k: np.array([getattr(r, f"{k}_acc") for r in runs]) for k in ("retain", "test", "forget")}
    lenses = store.get_extra(sub.id, leaderboard="public", name="lenses")
    per_example = {f"{name}: {key}": v for name in ("ks", "kl", "klom", "bounded_f")
                   for key, v in lenses[name]["per_example"].items() if key != "pvalue"}
    return {
        "lenses": report_plots.lens_examples_figure(per_example, arrays["eps"]),
        "attack": report_plots.attack_roc_figure(lenses["lira"]["roc"]["fpr"], lenses["lira"]["roc"]["tpr"], auc=lenses["lira"]["auc"]),
        "scatter": report_plots.forgetting_vs_utility_figure(*scatter_inputs(store)),
        "crowded scatter": report_plots.forgetting_vs_utility_figure(*crowded()),
        "eps": report_plots.epsilon_figure(arrays["eps"], arrays["points"]),
        "confs": report_plots.confidence_figure(unlearned, store.reference_confs(leaderboard="public"), arrays["eps"]),
        "accs": report_plots.accuracy_figure(accs, {"retain": refs.retain_acc, "test": refs.test_acc, "forget": refs.forget_acc}),
        "times": report_plots.run_times_figure([r.run_index for r in runs], [r.seconds for r in runs], [r.status.value for r in runs], 60.0),
    }


def test_site_plots_text_and_legends_readable(competition):
    """No text under 12 px; every legend inside the image and clear of every plotting area."""
    for name, fig in site_figures(competition[0]).items():
        renderer = drawn(fig)
        small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
                 if t.get_text() and t.get_visible() and t.get_fontsize() * fig.dpi / 72 < MIN_TEXT_PX]
        assert not small, f"{name}: text under {MIN_TEXT_PX} px: {small[:5]}"
        legends = fig.findobj(Legend)
        assert legends or name == "eps", f"{name} has no legend"
        page = fig.bbox
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, f"{name}: legend cut off"
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), f"{name}: the legend covers the plot {ax.get_label()!r}"
