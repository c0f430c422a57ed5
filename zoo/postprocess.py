"""Smoothing per-point predictions along GPS tracks (the terrain study's post-processing).

Points come in sequences: an isolated prediction inside a run of another class is usually
wrong. Each track is smoothed on its own, never mixed with another; a point where tracks
cross (same ``point_id`` in several tracks) gets one answer for all of them.
"""
from __future__ import annotations

import numpy as np

METHODS = ("window", "hmm")
DEFAULT_WINDOW = 5
DEFAULT_SWITCH_PENALTY = 4.0
_EPSILON = 1e-9


def _track_orders(track_ids, positions):
    """{track id: row indices sorted by position}."""
    track_ids, positions = np.asarray(track_ids), np.asarray(positions)
    orders = {}
    for track in np.unique(track_ids):
        rows = np.flatnonzero(track_ids == track)
        orders[track] = rows[np.argsort(positions[rows], kind="stable")]
    return orders


def window_smooth(probabilities, size=DEFAULT_WINDOW):
    """Centred moving mean of a track's (T, C) probabilities; shorter at the ends."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, got {size}")
    half = size // 2
    cumulative = np.vstack([np.zeros((1, probabilities.shape[1])), np.cumsum(probabilities, axis=0)])
    index = np.arange(len(probabilities))
    start, stop = np.maximum(index - half, 0), np.minimum(index + half + 1, len(probabilities))
    return (cumulative[stop] - cumulative[start]) / (stop - start)[:, None]


def switch_penalty_transitions(num_classes, switch_penalty=DEFAULT_SWITCH_PENALTY):
    """Log-transition scores: 0 to stay on a class, -switch_penalty to change."""
    scores = np.full((num_classes, num_classes), -float(switch_penalty))
    np.fill_diagonal(scores, 0.0)
    return scores


def estimate_transitions(labels, track_ids, positions, num_classes, pseudo_count=1.0):
    """Row-stochastic transition matrix counted along training tracks (with add-one smoothing)."""
    counts = np.full((num_classes, num_classes), float(pseudo_count))
    labels = np.asarray(labels)
    for rows in _track_orders(track_ids, positions).values():
        sequence = labels[rows]
        np.add.at(counts, (sequence[:-1], sequence[1:]), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def viterbi(log_emissions, log_transitions):
    """Most likely class sequence of a (T, C) track."""
    steps, classes = log_emissions.shape
    score = log_emissions[0].copy()
    back = np.zeros((steps, classes), dtype=np.int64)
    for t in range(1, steps):
        candidates = score[:, None] + log_transitions  # from (rows) -> to (columns)
        back[t] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + log_emissions[t]
    path = np.empty(steps, dtype=np.int64)
    path[-1] = score.argmax()
    for t in range(steps - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def smooth_tracks(probabilities, track_ids, positions, method="window", point_ids=None,
                  window=DEFAULT_WINDOW, switch_penalty=DEFAULT_SWITCH_PENALTY, transitions=None):
    """The smoothed class of each row (one row per point of a track).

    Args:
        probabilities: (N, C) class probabilities from the model.
        track_ids, positions: the track of each row and its order along it.
        method: ``"window"`` (mean of probabilities over a centred window of odd size
            ``window``) or ``"hmm"`` (Viterbi with the probabilities as emissions and either
            ``transitions``, a C x C row-stochastic matrix, e.g. from
            :func:`estimate_transitions`, or a ``switch_penalty`` in log units).
        point_ids: optional id of the physical point of each row; rows sharing one (a
            crossing) get the same answer: the mean of their smoothed probabilities for
            ``window``; for ``hmm``, the answer of the track whose answer the model itself
            finds most probable at that point.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if probabilities.ndim != 2 or len(probabilities) != len(track_ids) or len(track_ids) != len(positions):
        raise ValueError("probabilities (N, C), track_ids (N,) and positions (N,) must describe the same rows")
    num_classes = probabilities.shape[1]
    scores = np.zeros_like(probabilities)  # per row: smoothed probabilities, or one-hot path (hmm)
    if method == "hmm":
        log_transitions = (np.log(np.asarray(transitions, dtype=np.float64) + _EPSILON) if transitions is not None
                           else switch_penalty_transitions(num_classes, switch_penalty))
    for rows in _track_orders(track_ids, positions).values():
        if method == "window":
            scores[rows] = window_smooth(probabilities[rows], window)
        else:
            path = viterbi(np.log(probabilities[rows] + _EPSILON), log_transitions)
            scores[rows] = np.eye(num_classes)[path]
    labels = scores.argmax(axis=1)
    if point_ids is not None:
        point_ids = np.asarray(point_ids)
        for point in np.unique(point_ids):
            rows = np.flatnonzero(point_ids == point)
            if len(rows) < 2:
                continue
            if method == "window":
                labels[rows] = scores[rows].mean(axis=0).argmax()
            else:
                answers = labels[rows]
                labels[rows] = answers[np.argmax(probabilities[rows].mean(axis=0)[answers])]
    return labels
