"""Report figures (matplotlib, no display needed): confusion matrices, training curves,
score against inference throughput with the Pareto front."""
from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Tried in turn for each character (matplotlib's font fallback): DejaVu Sans first, as always, then fonts
# for other scripts (CJK...) where the machine has them. What none of them holds is not drawn as empty
# boxes with a warning per glyph (a class folder named 柴犬 printed a dozen): see confusion_figure.
FONT_FAMILIES = ("DejaVu Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans", "WenQuanYi Zen Hei",
                 "Droid Sans Fallback")


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[list, frozenset]:
    """The installed families of FONT_FAMILIES and every character they can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    installed = {font.name for font in font_manager.fontManager.ttflist}
    families, characters = [], set()
    for family in FONT_FAMILIES:
        if family in installed:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
            families.append(family)
            characters.update(FT2Font(path).get_charmap())
    return families or ["DejaVu Sans"], frozenset(characters)


def drawable(text: str) -> bool:
    """Whether this machine's fonts can draw every character of ``text``."""
    characters = _fonts()[1]
    return all(ord(character) in characters or character in "\n\t" for character in str(text))


def plain_text(text: str) -> str:
    """``text`` with each character no font here can draw replaced by '?' (titles, model labels)."""
    return "".join(c if drawable(c) else "?" for c in str(text))


def _with_fonts(draw):
    """Draw a figure with the fallback fonts, without changing matplotlib's settings for anyone else."""
    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with plt.rc_context({"font.family": _fonts()[0]}):
            return draw(*args, **kwargs)
    return wrapped


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


@_with_fonts
def confusion_heatmap(matrix, class_names, title, path):
    """The confusion matrix's figure (:func:`confusion_figure`) written to ``path``."""
    return _save(confusion_figure(matrix, class_names, title), path)


def confusion_figure(matrix, class_names, title):
    """Rows: true classes, shaded by their share of each; a segmentation matrix's one extra column counts
    pixels predicted as an ignored class (zoo.metrics.kept_confusion). A class name this machine's fonts
    cannot draw is shown as its row number in the per-class table (#1 first), which the title says."""
    matrix = np.asarray(matrix, dtype=float)
    undrawable = [not drawable(name) for name in class_names]
    class_names = [f"#{index + 1}" if lacking else name
                   for index, (name, lacking) in enumerate(zip(class_names, undrawable))]
    if any(undrawable):
        title = f"{title}\n#n: class n of the per-class table (no font here draws its name)"
    title = plain_text(title)
    predicted_names = list(class_names) + ["(an ignored class)"] * (matrix.shape[1] - len(class_names))
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(12, 4.5 + 0.3 * len(class_names))
    figure, axes = plt.subplots(figsize=(size, size * 0.85))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if len(class_names) <= 30:
        axes.set_xticks(range(len(predicted_names)), predicted_names, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
        if len(class_names) <= 12:
            for (row, column), value in np.ndenumerate(matrix):
                axes.text(column, row, f"{int(value)}", ha="center", va="center", fontsize=7,
                          color="white" if normalised[row, column] > 0.5 else "black")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    return figure


@_with_fonts
def training_curves(histories: dict, metric: str, title, path):
    """histories: label -> DataFrame of history.csv."""
    return _save(curves_figure(histories, metric, title), path)


def curves_figure(histories: dict, metric: str, title):
    """The training curves' figure: loss and ``metric`` by epoch, train solid and validation dashed.
    Epochs are whole numbers on the axis, and each epoch is marked while they are few: a run of one
    epoch is a point, which a line alone would not draw."""
    from matplotlib.ticker import MaxNLocator

    longest = max((len(history) for history in histories.values()), default=0)
    style = {"marker": "o", "markersize": 3} if longest <= 30 else {}
    validation_style = {**style, "markerfacecolor": "white"} if style else {}  # open marks: one epoch's two points
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        epochs = history["epoch"] + 1
        line, = loss_axes.plot(epochs, history["loss"], label=plain_text(label), **style)
        if "val_loss" in history:
            loss_axes.plot(epochs, history["val_loss"], "--", color=line.get_color(), **validation_style)
        if metric in history:
            metric_axes.plot(epochs, history[metric], color=line.get_color(), **style)
            if f"val_{metric}" in history:
                metric_axes.plot(epochs, history[f"val_{metric}"], "--", color=line.get_color(), **validation_style)
    for axes in (loss_axes, metric_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if longest:
            axes.set_xlim(0.5, longest + 0.5)  # a single epoch's autoscaled range holds no whole number
    key = "solid, filled: train; dashed, open: validation" if style else "solid: train, dashed: validation"
    loss_axes.set(xlabel="epoch", ylabel="loss")
    metric_axes.set(xlabel="epoch", ylabel=metric)
    loss_axes.legend(fontsize=7)
    figure.suptitle(plain_text(f"{title} ({key})"), fontsize=9)
    return figure


def pareto_front(points, higher_is_better=True):
    """Indices of points (score, speed) no other point beats on both (speed: higher is better)."""
    front = []
    for i, (score, speed) in enumerate(points):
        better = lambda a, b: a >= b if higher_is_better else a <= b  # noqa: E731
        dominated = any(better(s2, score) and sp2 >= speed and (s2 != score or sp2 != speed)
                        for j, (s2, sp2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


@_with_fonts
def score_vs_speed(labels, scores, speeds, metric, higher_is_better, title, path, named=None):
    """Every model's score against its inference speed, the Pareto front drawn; the labels of the
    models at indices ``named`` (all when None) and of the front's."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    axes.scatter(speeds, scores, color="tab:blue")
    front = sorted(pareto_front(list(zip(scores, speeds)), higher_is_better), key=lambda i: speeds[i])
    shown = set(range(len(labels)) if named is None else named) | set(front)
    for index in sorted(shown):
        axes.annotate(plain_text(labels[index]), (speeds[index], scores[index]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    if front:
        axes.plot([speeds[i] for i in front], [scores[i] for i in front], "-o", color="tab:red",
                  label="Pareto front: nothing is both better and faster")
        axes.legend(fontsize=7)
    axes.set_xscale("log")
    axes.set(xlabel="inference images/s (log scale)", ylabel=f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    axes.set_title(plain_text(title), fontsize=9)
    return _save(figure, path)
