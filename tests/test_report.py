"""Reports rendered from a results store made by a real tiny suite."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoo.cli import main
from zoo.harness.runner import run_suite
from zoo.harness.suite import load_suite
from zoo.report.figures import pareto_front

HERE = Path(__file__).parent
NASTY = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["plain", NASTY]):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for index in range(16):
            pixels = np.full((16, 16, 3), 60 + 120 * label, np.uint8) + rng.integers(0, 30, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    suite = load_suite({"name": "report-test", "description": "a tiny suite <b>for</b> the report tests",
                        "datasets": [{"name": "tiles", "source": "folder", "path": str(root / "images"),
                                      "split": {"val": 0.25, "test": 0.25}}],
                        "backbones": ["baseline_cnn", "nan_backbone"], "heads": ["linear", "mlp"], "seeds": [0, 1],
                        "plugins": [str(HERE / "plugin_faults.py")],
                        "train": {"image_size": 16, "batch_size": 8, "epochs": 2}})
    out = root / "out"
    assert run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None) == 1  # nan_backbone fails
    report_dir = root / "report"
    assert main(["report", str(out), "-o", str(report_dir), "--latency-budget", "50"]) == 0
    return out, report_dir


def markdown_table(text, header_start):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])))
    return rows


def test_leaderboard_numbers_equal_the_results_table(store):
    out, report_dir = store
    results = pd.read_csv(out / "results.csv")
    ok = results[results["status"] == "ok"]
    board = markdown_table((report_dir / "report.md").read_text(), "| rank | model | accuracy")
    assert len(board) == 2 and all(row["seeds"] == "2" for row in board)
    for row in board:
        runs = ok[ok["head"] == row["model"].split("/")[1]]
        accuracy = runs["accuracy"].to_numpy()
        assert row["accuracy"] == f"{accuracy.mean():.4f} ± {accuracy.std(ddof=1):.4f}"
        # Speed is measured once per architecture: the seed that reused it adds no second figure.
        measured = runs[runs["speed_measured_in"].isna()]
        assert len(measured) == 1 and runs["speed_measured_in"].dropna().tolist() == [measured["run_id"].iloc[0]]
        assert row["latency ms"] == f"{measured['latency_ms'].iloc[0]:.2f}"
        assert row["images/s"] == f"{measured['images_per_second'].iloc[0]:.1f}"
        assert row["params"] == f"{int(runs['params'].iloc[0]):,}"
        assert row["precise BN batches"].split(" ")[0] == str(int(runs["precise_bn_batches"].iloc[0]))
        low, high = (float(v) for v in row["95 % interval"].strip("[]").split(", "))
        assert low <= accuracy.mean() <= high


def test_leaderboard_marks_models_not_significantly_worse_and_the_recommendation_says_so(store):
    _, report_dir = store
    text = (report_dir / "report.md").read_text()
    best, second = markdown_table(text, "| rank | model | accuracy")
    assert best["vs best"] == "best"
    assert re.fullmatch(r"(tie|worse) \(p = [0-9.e-]+\)", second["vs best"])
    if second["vs best"].startswith("tie"):  # 8 test images: the usual outcome
        assert "statistically indistinguishable" in text or "the best is also the fastest" in text
    else:
        assert "significantly worse on these 8 test images" in text
    assert "within one point" not in text


def test_report_has_per_class_tables_figures_recommendation_and_failures(store):
    out, report_dir = store
    text = (report_dir / "report.md").read_text()
    assert re.search(r"Best accuracy: \*\*baseline_cnn/(linear|mlp)\*\*", text)
    assert "Best within the 50 ms latency budget" in text
    per_class = markdown_table(text, "| class | images | proportion")
    # Folder names, sorted; HTML-escaped, because markdown renders inline HTML.
    assert [row["class"] for row in per_class] == ["&lt;img src=x onerror=alert(1)&gt;", "plain"]
    assert NASTY not in text
    assert "### Failed runs" in text and "nan_backbone/linear" in text and "NaN" in text
    for name in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (report_dir / name).is_file()
    # One confusion matrix per model (two seeds each, pooled), not one per run.
    assert len(list((report_dir / "figures").glob("confusion-*.png"))) == 2


def test_html_escapes_everything_from_data_and_is_self_contained(store):
    _, report_dir = store
    page = (report_dir / "report.html").read_text()
    assert NASTY not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>for</b>" not in page and "&lt;b&gt;for&lt;/b&gt;" in page
    assert 'src="data:image/png;base64,' in page and 'src="figures/' not in page


def test_times_from_another_backend_are_named_and_not_compared(store, tmp_path):
    out, _ = store
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    results = pd.read_csv(copy / "results.csv")
    assert results["backend"].str.startswith("tensorflow ").all()
    for run_id in results.loc[results["head"] == "mlp", "run_id"]:  # reports read each run's own row
        row_file = copy / "runs" / run_id / "result.json"
        row_file.write_text(json.dumps({**json.loads(row_file.read_text()), "backend": "jax 0.4.38"}))
    assert main(["report", str(copy), "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Keras backends: jax, tensorflow;" in text
    board = markdown_table(text, "| rank | model | accuracy")
    timed = {row["model"].split("/")[1]: row["timed on"] for row in board}
    assert timed["mlp"].endswith(", jax, float32") and timed["linear"].endswith(", tensorflow, float32")
    assert "faster" not in text  # images/s of different backends are never set against each other
    if board[1]["vs best"].startswith("tie"):
        assert "1 model(s) statistically indistinguishable from it were timed elsewhere" in text


def test_runs_of_a_task_whose_scores_did_not_change_get_no_note(store, tmp_path):
    """A classification run of an earlier results version is scored as today's: nothing to say."""
    out, _ = store
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for row_file in (copy / "runs").glob("*/result.json"):
        row_file.write_text(json.dumps({**json.loads(row_file.read_text()), "results_version": 2}))
    assert main(["report", str(copy), "-o", str(tmp_path / "report")]) == 0
    assert "Notes on the scores" not in (tmp_path / "report" / "report.md").read_text()


def test_pareto_front():
    points = [(0.9, 100), (0.8, 500), (0.7, 50), (0.85, 500)]
    assert sorted(pareto_front(points)) == [0, 3]
    assert sorted(pareto_front([(0.2, 10), (0.5, 20)], higher_is_better=False)) == [0, 1]


def test_figures_draw_class_and_dataset_names_in_any_script_without_a_warning_per_glyph(tmp_path):
    """A user's class folders named 柴犬 or Schäferhund: every figure is drawn without matplotlib's "Glyph ...
    missing from font" warnings (a dozen per report before); a class name no installed font can draw is
    labelled by its row in the per-class table, and the title says so."""
    import warnings

    from zoo.report import figures

    names = ["Schäferhund", "chien d'eau", "柴犬"]
    history = pd.DataFrame({"epoch": [0, 1], "loss": [0.9, 0.5], "accuracy": [0.5, 0.7]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.confusion_heatmap(np.eye(3) * 4, names, "犬: baseline_cnn/linear seed 0", tmp_path / "c.png")
        figures.training_curves({"baseline_cnn/linear seed 0": history}, "accuracy", "犬: curves", tmp_path / "t.png")
        figures.score_vs_speed(["a/linear", "b/linear"], [0.5, 0.6], [10, 20], "accuracy", True, "犬",
                               tmp_path / "s.png")
        with plt_fonts(figures):
            figure = figures.confusion_figure(np.eye(3) * 4, names, "犬")
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert all((tmp_path / name).stat().st_size > 5_000 for name in ("c.png", "t.png", "s.png"))
    labels = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    cjk = figures.drawable("柴犬")  # where a CJK font is installed, it draws the name
    assert labels == (names if cjk else ["Schäferhund", "chien d'eau", "#3"])
    assert ("#n: class n of the per-class table" in figure.axes[0].get_title()) != cjk


def plt_fonts(figures):
    import matplotlib.pyplot as plt

    return plt.rc_context({"font.family": figures._fonts()[0]})


def test_training_curves_show_a_one_epoch_run_and_whole_epochs():
    """A run of one epoch (a smoke test, `--set train.epochs=1`) is one point per curve: it is drawn,
    and the epoch axis never reads 0.96, 0.98, 1.00..."""
    from zoo.report.figures import curves_figure

    one = pd.DataFrame({"epoch": [0], "loss": [0.9], "val_loss": [0.8], "accuracy": [0.5], "val_accuracy": [0.6]})
    three = pd.DataFrame({"epoch": [0, 1, 2], "loss": [0.9, 0.5, 0.3], "val_loss": [0.8, 0.6, 0.5],
                          "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.6, 0.7, 0.75]})
    for histories in ({"baseline_cnn/linear seed 0": one}, {"a": one, "b": three}):
        figure = curves_figure(histories, "accuracy", "curves")
        figure.canvas.draw()
        for axes in figure.axes:
            assert len(axes.lines) == 2 * len(histories)
            assert all(line.get_marker() not in (None, "None", "") for line in axes.lines)
            ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
            assert ticks and all(float(tick).is_integer() for tick in ticks), ticks


@pytest.mark.skipif(not shutil.which("chromium"), reason="Chromium is not installed (.ci/run installs it)")
def test_html_opens_in_headless_chromium(store, tmp_path):
    _, report_dir = store
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (report_dir / "report.html").resolve().as_uri()
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "Leaderboard" in dom.stdout and 'class="leaderboard"' in dom.stdout
    screenshot = tmp_path / "report.png"
    shot = subprocess.run(["chromium", *flags, f"--screenshot={screenshot}", "--window-size=1280,2400", url],
                          capture_output=True, text=True, timeout=90)
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    assert Image.open(screenshot).size == (1280, 2400)
    # Laid out in a narrow window, the page itself never scrolls sideways: a wide leaderboard scrolls
    # inside its own box (a 1280 px window cut the quickstart's last columns off).
    probe = tmp_path / "probe.html"
    probe.write_text(f"""<iframe id="r" src="{url}" style="width:900px;height:600px" onload="
        const page = this.contentDocument.documentElement;
        const board = this.contentDocument.querySelector('table.leaderboard');
        document.getElementById('out').textContent =
          'widths ' + page.scrollWidth + ' ' + page.clientWidth + ' ' + board.scrollWidth + ' ' + board.clientWidth;
    "></iframe><pre id="out"></pre>""")
    dom = subprocess.run(["chromium", *flags, "--allow-file-access-from-files", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90)
    widths = re.search(r"widths (\d+) (\d+) (\d+) (\d+)", dom.stdout)
    assert widths, dom.stdout[-2000:] + dom.stderr[-2000:]
    page_width, page_visible, board_width, board_visible = map(int, widths.groups())
    assert board_width > board_visible  # the leaderboard is wider than 900 px: it scrolls in its box...
    assert page_width <= page_visible, widths.group(0)  # ...and the page does not


def test_a_segmentation_folder_is_ranked_by_miou_with_the_kl_score_beside_it(tmp_path):
    """A user's own segmentation folder has no card choosing a metric: its leaderboard and
    recommendation go by mIoU, the field's standard, and show the KL score beside it. Its void pixels
    (a Pascal VOC-style 255 border) are named as left out, with how many pixels were predicted as void."""
    from zoo.report import write_report

    rng = np.random.default_rng(0)
    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    for index in range(24):
        mask = np.zeros((16, 16), np.uint8)
        mask[:, : int(rng.integers(4, 12))] = 1
        mask[0, :] = 255
        pixels = (mask[..., None] * 150 + rng.integers(0, 60, (16, 16, 3))).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "seg" / "images" / f"{index}.png")
        Image.fromarray(mask).save(tmp_path / "seg" / "masks" / f"{index}.png")
    suite = load_suite({"name": "seg-report", "datasets": [{"name": "fields", "source": "folder", "void_value": 255,
                                                            "path": str(tmp_path / "seg")}],
                        "heads": ["fcn"], "train": {"image_size": 16, "batch_size": 8, "epochs": 1}})
    assert run_suite(suite, tmp_path / "out", executor="in-process", report=False, log=lambda *_: None) == 0
    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    text = write_report(tmp_path / "out", formats=("md",), report_dir=tmp_path / "report")[0].read_text()
    assert f"Best mIoU: **baseline_cnn/fcn** with {row['miou']:.4f}" in text
    board = markdown_table(text, "| rank | model | miou")
    assert board[0]["kl_score"] == f"{row['kl_score']:.4f}"
    metrics = json.loads((tmp_path / "out" / "runs" / row["run_id"] / "metrics.json").read_text())
    assert [c["class"] for c in metrics["per_class"]] == ["class_0", "class_1"]  # void is no scored class
    scored = int(np.sum(metrics["confusion_matrix"]))
    assert scored == metrics["test_examples"] * 15 * 16  # the void row of every test tile left out
    assert (f"Left out of the loss and the scores: void. {metrics['pixels_predicted_as_ignored']:,} of the "
            f"{scored:,} scored test pixels") in text
    assert "Notes on the scores" not in text

    # A run scored by an older zoo, whose KL score was defined otherwise, is named wherever it stands beside
    # runs scored since: the report, zoo serve's leaderboard, and zoo run / zoo plan on resuming the suite.
    from zoo.harness.runner import plan_suite
    from zoo.serve.study import Study

    row_file = tmp_path / "out" / "runs" / row["run_id"] / "result.json"
    row_file.write_text(json.dumps({**json.loads(row_file.read_text()), "results_version": 2}))
    text = write_report(tmp_path / "out", formats=("md",), report_dir=tmp_path / "report")[0].read_text()
    note = ("1 finished run(s) of fields were scored by an older zoo (results version 2): its land-cover KL score "
            "normalised each tile's class proportions before dropping the ignored classes")
    assert "Notes on the scores:" in text and note in " ".join(text.split())
    assert f"--force --only 'fields-*'` trains and scores them again" in text
    assert any(note in n for n in Study(tmp_path / "out").leaderboards()["sections"][0]["score_notes"])
    lines = []
    assert plan_suite(suite, tmp_path / "out", log=lines.append) == 0
    assert any(line.startswith("warning: " + note) for line in lines), lines


def test_an_imbalanced_folder_is_ranked_by_the_metric_its_entry_chooses(tmp_path, capsys):
    """A shelter's rare breeds: with 40 beagles and 6 pugs, accuracy mostly measures the beagles. zoo data info
    counts each class's images and says so; a dataset entry's `headline_metric: macro_f1` ranks the report (with
    accuracy beside it), the recommendation, zoo compare and zoo predict's list of runs by it. A card's own choice
    is overridden by an entry's (it was taken as a key and ignored); a metric that cannot rank the task is refused
    before anything runs."""
    from zoo.data import open_source
    from zoo.errors import ConfigError
    from zoo.predict import refuse_suite_folder
    from zoo.report import write_report
    from zoo.stats import compare_runs, dataset_headline_metric

    rng = np.random.default_rng(0)
    for name, count in (("beagle", 40), ("corgi", 12), ("pug", 6)):
        (tmp_path / "dogs" / name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "dogs" / name / f"{index}.png")
    assert main(["data", "info", str(tmp_path / "dogs")]) == 0
    printed = capsys.readouterr().out
    assert "  train: beagle 40, corgi 12, pug 6\n" in printed
    assert "note: classes range from 6 images (pug) to 40 (beagle), 7:1" in printed and "headline_metric: macro_f1" in printed
    entry = {"name": "dogs", "path": str(tmp_path / "dogs"), "headline_metric": "macro_f1"}
    assert open_source(entry).info.notes == []  # chosen: nothing left to suggest
    suite = load_suite({"name": "dogs", "datasets": [entry], "heads": ["linear", "mlp"],
                        "train": {"image_size": 16, "batch_size": 8, "epochs": 1}})
    out = tmp_path / "out"
    lines = []
    assert run_suite(suite, out, executor="in-process", report=False, log=lines.append) == 0
    frame = pd.read_csv(out / "results.csv")
    text = write_report(out, formats=("md",), report_dir=tmp_path / "report")[0].read_text()
    board = markdown_table(text, "| rank | model | macro_f1")
    best = frame.sort_values("macro_f1", ascending=False, kind="stable").iloc[0]
    assert [row["macro_f1"] for row in board] == [f"{v:.4f}" for v in sorted(frame["macro_f1"], reverse=True)]
    assert board[0]["accuracy"] == f"{best['accuracy']:.4f}"
    assert "Best macro F1: **baseline_cnn/" in text and "Ranked by macro_f1 (higher is better)" in text
    ids = sorted(frame["run_id"])
    assert compare_runs(out, ids[0], ids[1])["metric"] == "macro_f1"
    with pytest.raises(Exception, match=r"dogs: macro_f1 "):
        refuse_suite_folder(out)
    with pytest.raises(ConfigError, match="headline_metric 'miou' cannot rank classification runs; choose one of "
                                          "accuracy, macro_f1"):
        open_source({**entry, "headline_metric": "miou"})
    landcover = open_source({"name": "synthetic_landcover", "headline_metric": "miou"}).info
    assert dataset_headline_metric("synthetic_landcover", ["segmentation"], landcover.to_dict()) == "miou"
    assert dataset_headline_metric("synthetic_landcover", ["segmentation"], {}) == "kl_score"  # the card's


def test_a_cards_published_results_stand_beside_the_leaderboard_and_a_folder_has_none(store, tmp_path, monkeypatch):
    """The dataset card's reference_results (source, model, metric, value) are shown after the leaderboard, so a
    user on EuroSAT or Stanford Dogs sees the literature's figure beside their own; entries without a value are
    left out, and a folder of the user's own has no card to cite."""
    from zoo.data import DATASETS
    from zoo.report import write_report

    monkeypatch.setitem(DATASETS.get("synthetic_terrain"), "reference_results", [
        {"source": NASTY, "model": "a ResNet", "metric": "accuracy", "value": 0.9857},
        {"source": "starter kit", "model": "U-Net", "metric": "accuracy", "value": None}])
    suite = load_suite({"name": "cited", "datasets": ["synthetic_terrain"], "backbones": ["baseline_cnn"],
                        "heads": ["linear"], "train": {"image_size": 16, "batch_size": 32, "epochs": 1,
                                                       "steps_per_epoch": 2}})
    out = tmp_path / "out"
    assert run_suite(suite, out, executor="in-process", report=False, log=lambda *_: None) == 0
    markdown, page = (path.read_text() for path in write_report(out, formats=("md", "html"),
                                                                  report_dir=tmp_path / "report"))
    rows = markdown_table(markdown, "| source | model | metric | value |")
    assert [(row["model"], row["metric"], row["value"]) for row in rows] == [("a ResNet", "accuracy", "0.9857")]
    assert "Published results on synthetic_terrain" in markdown and "starter kit" not in markdown
    assert NASTY not in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "0.9857" in page
    _, report_dir = store
    assert "Published results" not in (report_dir / "report.md").read_text()
