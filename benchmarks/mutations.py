"""Break zoo on purpose, one promise at a time, and check that the tests that guard it fail.

Each mutation below is the smallest change to the product that breaks one promise the README makes
(redo finished runs with --force, name the fastest tie, Holm's correction, XLA when asked, the study's
equalisation, the schedules, the loss, class weights, the caches, one process per run, offline presets,
quiet output...). The script applies one, runs only the tests that cover it (pytest -x), records whether
they failed ("killed") or passed ("survived": a hole in the tests), and puts the file back, whatever
happens. It prints one line per mutation and the score, and can write them as CSV:

    python benchmarks/mutations.py [--only NAME] [--csv reports/mutations.csv]

With --only and an existing --csv file, the rows of the mutations run replace theirs and the others stay.

A mutation whose original text is no longer in its file is reported as "stale": the product moved, so the
mutation must be moved with it. Run from the repository root with the test environment (.[dev]).
"""
from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str        # the promise it breaks
    path: str        # file, relative to the repository root
    original: str    # text that must occur exactly once
    mutated: str
    tests: tuple     # pytest node ids or files that must then fail


MUTATIONS = [
    Mutation("zoo serve follows a file path out of the run folder", "zoo/serve/study.py",
             "if not path.is_relative_to(folder) or not path.is_file():", "if not path.is_file():",
             ("tests/test_serve.py::test_paths_outside_the_served_folder_are_404",)),
    Mutation("zoo serve computes a study's leaderboards again for each visit that comes while they are computed",
             "zoo/serve/study.py", "        with self._building:\n", "        if True:\n",
             ("tests/test_serve.py::test_leaderboards_are_computed_once_however_many_ask_at_start",)),
    Mutation("zoo serve lets any token through", "zoo/serve/app.py",
             "if not given or not hmac.compare_digest(given.encode(), self.token.encode()):", "if not given:",
             ("tests/test_serve.py::test_a_token_is_required_on_every_request_when_set",)),
    Mutation("zoo serve shows user text as HTML", "zoo/serve/static/zoo.js",
             "    name.textContent = answer.name;", "    name.innerHTML = answer.name;",
             ("tests/test_serve.py::test_browser_escapes_what_users_name",)),
    Mutation("augmentation draws from the process's own random stream", "zoo/data/pipeline.py",
             "            rng = np.random.default_rng([seed, epoch, index])\n",
             "            rng = np.random.default_rng()\n",
             ("tests/test_input_path.py::test_photo_augmentation_changes_images_and_follows_the_seed",)),
    Mutation("the last batch of a split keeps its own, shorter shape", "zoo/data/pipeline.py",
             "        missing = self.batch_size - len(chosen)\n", "        missing = 0\n",
             ("tests/test_input_path.py::test_every_batch_is_full_so_a_compiled_step_sees_one_shape",
              "tests/test_padding.py::test_each_step_compiles_once_whatever_the_split_sizes")),
    Mutation("fit's val_loss averages over the padding rows too", "zoo/data/pipeline.py",
             "                logs[\"val_loss\"] = float(logs[\"val_loss\"]) * validation.padded_count / validation.count\n",
             "                pass\n",
             ("tests/test_padding.py::test_padding_changes_no_validation_or_test_number",)),
    Mutation("validation accuracy counts the padding rows", "zoo/losses.py",
             "            sample_weight = ops.cast(ops.greater(sample_weight, 0), self.dtype)\n",
             "            sample_weight = None\n",
             ("tests/test_padding.py::test_padding_changes_no_validation_or_test_number",)),
    Mutation("test scores include the rows that complete the last batch", "zoo/harness/stages.py",
             "            probabilities.append(outputs[:rows])\n            labels = _host(labels)[:rows]\n",
             "            probabilities.append(outputs)\n            labels = _host(labels)\n",
             ("tests/test_padding.py::test_padding_changes_no_validation_or_test_number",)),
    Mutation("TensorFlow reads a damaged XLA cache entry", "zoo/harness/compilation.py",
             "    remove_damaged_entries(folder)\n    return folder\n", "    return folder\n",
             ("tests/test_compilation.py::test_tensorflow_xla_runs_share_their_executables_and_leave_the_counts_empty",)),
    Mutation("the PyTorch backend's slowness on a GPU goes unsaid", "zoo/harness/preflight.py",
             "    if not gpu or not slow:\n        return []\n", "    return []\n",
             ("tests/test_preflight.py::test_the_pytorch_backend_on_an_nvidia_gpu_is_named_with_its_measured_speed_before_the_suite",)),
    Mutation("a prediction is read before the next batch is queued: the device idles meanwhile", "zoo/runtime.py",
             "        if pending is not None:\n            yield pending[0], host_outputs(pending[1])\n        pending = (batch, outputs)\n",
             "        yield batch, host_outputs(outputs)\n",
             ("tests/test_runtime.py::test_the_next_batch_is_predicted_before_this_one_is_handed_over",)),
    Mutation("JAX inference keeps the weights it first saw", "zoo/runtime.py",
             "        return inference(*variable_values(model), images)\n",
             "        frozen = predict.__dict__.setdefault(\"variables\", variable_values(model))\n"
             "        return inference(*frozen, images)\n",
             ("tests/test_runtime.py::test_jax_inference_stays_on_the_device_equals_keras_and_compiles_once",)),
    Mutation("JAX draws each initial weight itself, one compiled program per shape", "zoo/runtime.py",
             "    if backend() != \"jax\":\n        yield\n        return\n    try:\n        import jax\n",
             "    if True:\n        yield\n        return\n    try:\n        import jax\n",
             ("tests/test_runtime.py::test_building_a_model_on_jax_compiles_nothing_per_weight_shape",
              "tests/test_padding.py::test_each_step_compiles_once_whatever_the_split_sizes")),
    Mutation("a pixel predicted as an ignored class leaves the metrics instead of counting as an error",
             "zoo/metrics.py",
             "    return np.concatenate([rows[..., kept], rows[..., ignored].sum(axis=-1, keepdims=True)], axis=-1)\n",
             "    return np.concatenate([rows[..., kept], 0 * rows[..., ignored].sum(axis=-1, keepdims=True)], axis=-1)\n",
             ("tests/test_metrics.py::test_a_pixel_predicted_as_an_ignored_class_is_an_error_of_its_true_class",)),
    Mutation("the GPU check's interrupt is lost when it was started as a background job", "benchmarks/budget.py",
             "                                   preexec_fn=_interrupt_by_default, **popen)",
             "                                   **popen)",
             ("tests/test_gpu_check.py::test_a_spent_budget_stops_a_child_politely_then_for_good",)),
    Mutation("zoo serve opens the GPU with the backend's defaults and keeps most of its memory from a training suite",
             "zoo/cli.py", 'BESIDE_TRAINING = {"serve", "predict", "export"}', 'BESIDE_TRAINING = {"predict", "export"}',
             ("tests/test_runtime.py::test_serve_predict_and_export_take_gpu_memory_as_needed_before_any_model_is_loaded",)),
    Mutation("a run's time leaves out its speed measurement", "zoo/harness/stages.py",
             '    with clock.stage("speed"):\n', "    if True:\n",
             ("tests/test_harness.py::test_a_runs_whole_time_is_recorded_and_every_second_of_it_has_its_stage",)),
    Mutation("zoo serve's run page leaves out where the run's time went", "zoo/serve/templates/run.html.j2",
             "{% if run.metrics.stage_seconds %}", "{% if false %}",
             ("tests/test_serve.py::test_a_run_page_says_where_the_run_s_time_went",)),
    Mutation("the GPU check writes its files only when it ends: a command cut at a machine's limit loses all",
             "benchmarks/gpu_check.py",
             "    def write(self, rows: list[dict], final: bool = False) -> dict:\n",
             "    def write(self, rows: list[dict], final: bool = False) -> dict:\n        if not final:\n            return {}\n",
             ("tests/test_gpu_check.py::test_a_gpu_check_killed_from_outside_leaves_the_figures_it_measured",)),
    Mutation("a capped epoch stops where the split's batches run out", "zoo/harness/stages.py",
             "            self.fit_data[0].endless()\n", "            pass\n",
             ("tests/test_harness.py::test_every_capped_epoch_trains_its_steps",)),
    Mutation("augmentation is drawn but never applied", "zoo/data/prepare.py",
             "            images = transform_reflected(images, augmentation)\n", "            pass\n",
             ("tests/test_input_path.py::test_photo_augmentation_changes_images_and_follows_the_seed",)),
    Mutation("the decoded cache is read without checking it is whole", "zoo/data/decoded.py",
             "        if {k: meta.get(k) for k in expected} != expected:\n            return None\n",
             "",
             ("tests/test_input_path.py::test_a_damaged_or_half_written_cache_is_rebuilt_with_the_same_rows",)),
    Mutation("the decoded cache is rebuilt by every run", "zoo/data/decoded.py",
             "    complete = _read_complete(folder, expected)\n    if complete is None:\n",
             "    complete = None\n    if complete is None:\n",
             ("tests/test_input_path.py::test_each_split_is_decoded_once_and_every_later_run_reads_the_cache",)),
    Mutation("a failed run's reason is TensorFlow's wrapper line", "zoo/harness/worker.py",
             "    if message.endswith(\"in user code:\") and len(text) > 1:", "    if False:",
             ("tests/test_backends.py::test_a_failed_run_s_reason_is_the_sentence_that_explains_it",)),
    Mutation("the output folder's compilation cache is never used", "zoo/harness/compilation.py",
             "        jax.config.update(\"jax_compilation_cache_dir\", str(folder))\n", "        pass\n",
             ("tests/test_compilation.py::test_later_runs_of_a_sweep_compile_nothing_new",)),
    Mutation("--force is ignored", "zoo/harness/runner.py",
             "if force or (read_result(", "if False or (read_result(",
             ("tests/test_harness.py::test_rerun_skips_finished_runs_and_force_redoes_them",)),
    Mutation("the slowest tie is called the fastest", "zoo/report/render.py",
             "fastest = max([r for r in ties", "fastest = min([r for r in ties",
             ("tests/test_recommendation.py",)),
    Mutation("the largest tie is called the smallest", "zoo/report/render.py",
             "smallest = min(ties or [best]", "smallest = max(ties or [best]",
             ("tests/test_recommendation.py",)),
    Mutation("Holm's correction is skipped", "zoo/report/render.py",
             "stats.holm([r[\"comparison\"][\"p_value\"] for r in tested])",
             "[r[\"comparison\"][\"p_value\"] for r in tested]",
             ("tests/test_recommendation.py",)),
    Mutation("a leaderboard's intervals come from other resamples than scipy's bootstrap", "zoo/stats.py",
             "    rng = np.random.default_rng(seed)\n    distributions", "    rng = np.random.default_rng(seed + 1)\n    distributions",
             ("tests/test_stats.py::test_mean_metric_intervals_are_scipys_bootstrap_and_rows_share_its_resamples",)),
    Mutation("a leaderboard row is compared with the best by position, not by test example", "zoo/stats.py",
             "paired.append((index, a, reference.take(_alignment(a.example_ids, reference.example_ids))))",
             "paired.append((index, a, reference))",
             ("tests/test_stats.py",)),
    Mutation("a large study's report details its first models but not those the recommendation names",
             "zoo/report/render.py",
             "chosen = {id(r) for r in board[:max(0, self.detailed_models)]} | named_ids",
             "chosen = {id(r) for r in board[:max(0, self.detailed_models)]}",
             ("tests/test_recommendation.py::test_a_large_study_details_the_first_models_and_every_one_the_recommendation_names",)),
    Mutation("the latency budget picks the fastest, not the best within it", "zoo/report/render.py",
             "pick = within[0]", "pick = min(within, key=lambda r: r[\"latency_ms\"])",
             ("tests/test_recommendation.py",)),
    Mutation("train.xla is dropped before jit_compile", "zoo/harness/stages.py",
             "jit_compile=jit_compile(train.xla)", "jit_compile=jit_compile(False)",
             ("tests/test_performance.py::test_mixed_precision_and_xla_runs",)),
    Mutation("XLA silently refused by Keras goes unreported", "zoo/harness/recipes.py",
             "    if asked and not used:\n", "    if False:\n",
             ("tests/test_performance.py::test_xla_refused_by_a_layer_fails_the_run_naming_it",)),
    Mutation("a head on cached features gets another image's features", "zoo/harness/features.py",
             "inputs = tuple(chosen[:len(features)])", "inputs = tuple(np.roll(a, 1, 0) for a in chosen[:len(features)])",
             ("tests/test_performance.py::test_feature_cache_gives_the_same_predictions_as_the_images",)),
    Mutation("equalize is skipped", "zoo/data/prepare.py",
             "        return equalize_histogram(images)\n", "        return images\n",
             ("tests/test_input_path.py::test_equalize_and_whiten_follow_their_definitions",)),
    Mutation("whiten spreads by 32, not 64", "zoo/data/prepare.py",
             "ops.sqrt(variance + 1e-6) * 64.0", "ops.sqrt(variance + 1e-6) * 32.0",
             ("tests/test_input_path.py::test_equalize_and_whiten_follow_their_definitions",)),
    Mutation("the cosine schedule decays over one epoch", "zoo/harness/stages.py",
             "decay_steps=self.steps_per_epoch() * epochs", "decay_steps=self.steps_per_epoch()",
             ("tests/test_training_options.py::test_cosine_schedule_follows_its_formula",)),
    Mutation("the plateau schedule halves instead of dividing by five", "zoo/harness/stages.py",
             "monitor=\"val_loss\", factor=0.2", "monitor=\"val_loss\", factor=0.5",
             ("tests/test_training_options.py::test_plateau_schedule_cuts_the_rate_by_five_after_two_epochs_without_improvement",)),
    Mutation("the focal loss is plain cross-entropy", "zoo/harness/recipes.py",
             "return keras.losses.CategoricalFocalCrossentropy()", "return keras.losses.CategoricalCrossentropy()",
             ("tests/test_training_options.py::test_the_focal_loss_is_the_one_trained",)),
    Mutation("class weights never reach fit", "zoo/harness/stages.py",
             "class_weight=self.data.class_weight_dict,", "class_weight=None,",
             ("tests/test_training_options.py::test_class_weights_are_the_balanced_ones_and_reach_the_loss",)),
    Mutation("train.cache: none still reads the decoded cache", "zoo/data/decoded.py",
             "    if mode == \"none\" and streams:\n", "    if False:\n",
             ("tests/test_training_options.py::test_the_decoded_cache_is_written_once_and_changes_no_number",)),
    Mutation("--isolate shares one worker", "zoo/harness/runner.py",
             'runs_per_worker = 1 if name == "isolated" else None', "runs_per_worker = None",
             ("tests/test_training_options.py::test_isolate_gives_every_run_its_own_process",)),
    Mutation("--prepare builds nothing", "zoo/harness/preflight.py",
             "    by_name = {r.dataset[\"name\"]: r.dataset for r in runs}\n    for problem in problems:",
             "    by_name = {r.dataset[\"name\"]: r.dataset for r in runs}\n    for problem in []:",
             ("tests/test_preflight.py::test_prepare_builds_the_missing_dataset_and_the_suite_then_trains",)),
    Mutation("zoo weights fetch does not check the hash", "zoo/weights.py",
             "path = keras.utils.get_file(weights.file_name, weights.url, file_hash=weights.file_hash,",
             "path = keras.utils.get_file(weights.file_name, weights.url, file_hash=None,",
             ("tests/test_weights.py::test_weights_fetch_downloads_and_checks_the_hash",)),
    Mutation("a truncated preset is loaded", "zoo/weights.py",
             "            return f\"{path} is damaged or truncated", "            return None and f\"{path} is damaged or truncated",
             ("tests/test_hub_offline.py",)),
    Mutation("no probe: keras-hub is left to fail on the network", "zoo/weights.py",
             "    if not reachable(host):", "    if False:",
             ("tests/test_hub_offline.py",)),
    Mutation("ViT's patch rule is not checked", "zoo/backbones/hub.py",
             "paper=\"arXiv:2010.11929\", size_multiple=PATCH_16)", "paper=\"arXiv:2010.11929\")",
             ("tests/test_hub_offline.py",)),
    Mutation("TensorFlow's start-up lines reach the user", "zoo/console.py",
             "    if os.environ.get(VERBOSE_ENV, \"\").strip() not in (\"\", \"0\") or",
             "    if True or",
             ("tests/test_console.py",)),
    Mutation("the report shows a speed measured once as a spread over seeds (± 0)", "zoo/report/render.py",
             '_mean_std(_own_measurements(group, "latency_ms"), 2)', '_mean_std(group["latency_ms"], 2)',
             ("tests/test_report.py::test_leaderboard_numbers_equal_the_results_table",)),
    Mutation("a dataset entry's misspelt key is ignored", "zoo/data/sources.py",
             "    check_keys(entry, ", "    (lambda *_: None)(entry, ",
             ("tests/test_harness.py::test_bad_suite_fails_before_training_naming_the_key",)),
    Mutation("a track manifest's tiles are read without their bit depth's scaling", "zoo/data/images.py",
             "    return to_dataset_scale(array, dataset_maximum).astype(np.float32, copy=False)",
             "    return array.astype(np.float32)",
             ("tests/test_postprocess.py::test_a_suite_trains_and_smooths_along_the_tracks_of_a_manifest",)),
    Mutation("an edited track manifest is the same content for the caches", "zoo/data/tracks.py",
             'return f"{split}:{self.info.splits[split]}:{self.listing}"', 'return f"{split}:{self.info.splits[split]}"',
             ("tests/test_postprocess.py::test_a_changed_manifest_is_other_content_for_the_caches",)),
    Mutation("a user's segmentation folder is ranked by the KL score of class proportions", "zoo/metrics.py",
             '    return preferred or "miou"', '    return preferred or "kl_score"',
             ("tests/test_report.py::test_a_segmentation_folder_is_ranked_by_miou_with_the_kl_score_beside_it",)),
    Mutation("LiteRT's notices while exporting reach the terminal", "zoo/console.py",
             '    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\\.$",\n', "",
             ("tests/test_console.py::test_only_the_known_harmless_start_up_lines_are_dropped",)),
    Mutation("NumPy's FutureWarning in Keras's ONNX shim reaches the terminal", "zoo/export.py",
             'warnings.filterwarnings("ignore", message="In the future `np.object`", category=FutureWarning)',
             "pass",
             ("tests/test_console.py::test_a_warning_raised_during_a_run_still_reaches_the_user",)),
    Mutation("a backbone option its builder does not take passes the suite's validation", "zoo/harness/suite.py",
             '    _check_backbone_options(settings["backbone_options"] or {}, backbone)\n', "",
             ("tests/test_harness.py::test_bad_suite_fails_before_training_naming_the_key",)),
    Mutation("zoo predict takes --top-k 0 and fails with a traceback", "zoo/cli.py",
             'predict.add_argument("--top-k", type=whole_number(1), default=5)', 'predict.add_argument("--top-k", type=int, default=5)',
             ("tests/test_cli_list.py::test_bad_numbers_and_formats_get_one_line_naming_the_option",)),
    Mutation("a JAX or PyTorch run's exports are converted on its own backend", "zoo/harness/worker.py",
             'if backend() == "tensorflow" or not installed("tensorflow"):', "if True:",
             ("tests/test_backends.py::test_runs_trained_on_jax_and_pytorch_are_exported_by_tensorflows_converters",)),
    Mutation("zoo export refuses a run trained on another backend", "zoo/harness/deploy.py",
             "return reopen(run_dir, any_backend=True)", "return reopen(run_dir)",
             ("tests/test_backends.py::test_runs_trained_on_jax_and_pytorch_are_exported_by_tensorflows_converters",)),
    Mutation("a class folder's subfolders are dropped without a word", "zoo/data/folder.py",
             "            for path in self._files_below(class_folder):", "            for path in _image_files(class_folder):",
             ("tests/test_data.py::test_a_class_folder_s_subfolders_belong_to_it_and_stray_files_are_named",)),
    Mutation("ignore_classes given by name ignore nothing", "zoo/data/sources.py",
             "        elif isinstance(value, str) and value in names:\n            indices.append(names.index(value))\n",
             "        elif isinstance(value, str):\n            pass\n",
             ("tests/test_data.py::test_ignored_classes_are_given_by_name_or_index_and_an_unknown_one_is_refused",)),
    Mutation("the export child of a JAX run opens the GPU with TensorFlow's defaults", "zoo/harness/deploy.py",
             "    take_gpu_memory_on_demand(env)  # beside", "    (lambda _: None)(env)  # beside",
             ("tests/test_runtime.py::test_serve_predict_and_export_take_gpu_memory_as_needed_before_any_model_is_loaded",)),
    Mutation("a library's own warning is filtered too", "zoo/console.py",
             "        return [line]\n", "        return []\n",
             ("tests/test_console.py",)),
    Mutation("segmentation images in subfolders are dropped without a word", "zoo/data/folder.py",
             "        for path in self._files_below(images_folder):\n",
             "        for path in (p for p in self._files_below(images_folder) if p.parent == images_folder):\n",
             ("tests/test_data.py::test_segmentation_images_in_subfolders_pair_with_the_mask_at_the_same_place",)),
    Mutation("a card's task is overridden by the entry's", "zoo/data/sources.py",
             "    if fixed is not None and entry.get(\"task\", fixed) != fixed:\n",
             "    if False:\n",
             ("tests/test_data.py::test_a_task_the_folder_layout_contradicts_is_refused",)),
    Mutation("a palette mask is read as the colours it shows", "zoo/data/images.py",
             "upright(image.convert(\"L\") if mode == \"1\" else image, exif_orientation(image))",
             "upright(image.convert(\"L\") if mode == \"1\" else image.convert(\"RGB\") if mode == \"P\" "
             "else image, exif_orientation(image))",
             ("tests/test_data.py::test_palette_masks_and_a_void_value_read_as_pascal_voc_means_them",)),
    Mutation("void pixels are trained and scored as a class", "zoo/data/sources.py",
             "ignore_classes=sorted(set(ignored_class_indices(card, self.scan.class_names) + void)),",
             "ignore_classes=sorted(set(ignored_class_indices(card, self.scan.class_names))),",
             ("tests/test_data.py::test_palette_masks_and_a_void_value_read_as_pascal_voc_means_them",)),
    Mutation("masks holding 255 silently make 256 classes", "zoo/data/folder.py",
             "            if highest in (255, 65535) and highest - below > 1:",
             "            if False:",
             ("tests/test_data.py::test_palette_masks_and_a_void_value_read_as_pascal_voc_means_them",)),
    Mutation("zoo run's ETA ignores the recorded plan", "zoo/harness/runner.py",
             "    planned = recorded_estimates(out_dir)\n", "    planned = {}\n",
             ("tests/test_serve.py::test_a_run_finishing_while_the_page_is_open_shows_up",)),
    Mutation("zoo predict --output's rate after the first batch includes it", "zoo/predict.py",
             '"steady_images_per_second": after_first / (seconds - first[0]) if after_first else None}',
             '"steady_images_per_second": after_first / seconds if after_first else None}',
             ("tests/test_batch_predict.py::test_a_folder_gives_one_row_per_image_equal_to_zoo_predict_on_each_file",)),
    Mutation("zoo predict decodes a large JPEG otherwise than the run's own images", "zoo/predict.py",
             "suffix=PurePosixPath(location).suffix, size=self.input.image_size)",
             "suffix=PurePosixPath(location).suffix)",
             ("tests/test_input_path.py::test_large_jpegs_decode_at_a_reduced_scale_the_same_way_for_training_and_"
              "prediction",)),
    Mutation("the scan's reduced-scale check of a JPEG reads its header only", "zoo/data/images.py",
             "        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))\n        image.load()\n",
             "        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))\n",
             ("tests/test_input_path.py::test_large_jpegs_decode_at_a_reduced_scale_the_same_way_for_training_and_"
              "prediction",)),
    Mutation("finished runs on a folder changed since are taken for today's images", "zoo/harness/preflight.py",
             "        if moved:\n            changed.setdefault", "        if False:\n            changed.setdefault",
             ("tests/test_harness.py::test_finished_runs_on_a_folder_changed_since_are_named_not_taken_for_todays_"
              "images",)),
    Mutation("a suite run in the same process as an earlier one reads the earlier scan of a folder",
             "zoo/harness/executors.py", "        forget_sources()\n", "        pass\n",
             ("tests/test_harness.py::test_finished_runs_on_a_folder_changed_since_are_named_not_taken_for_todays_"
              "images",)),
    Mutation("16-bit images far below full scale train dark without a word", "zoo/harness/runner.py",
             '            log(f"note: dataset {source.info.name}: {note}")\n', "            pass\n",
             ("tests/test_data.py::test_sixteen_bit_images_far_below_full_scale_get_a_note_naming_the_likely_one",)),
    Mutation("zoo weights check takes a file of the right name for the weights", "zoo/weights.py",
             "            if file_matches_hash(path, weights.file_hash):\n                return \"here\", str(path)\n",
             "            if True:\n                return \"here\", str(path)\n",
             ("tests/test_weights.py::test_weights_check_says_what_a_run_would_find_here_without_downloading",)),
    Mutation("the report is silent about the classes its scores leave out", "zoo/metrics.py",
             '    note = f"Left out of the loss and the scores: {\', \'.join(names)}."\n', '    return ""\n',
             ("tests/test_report.py::test_a_segmentation_folder_is_ranked_by_miou_with_the_kl_score_beside_it",)),
    Mutation("zoo run keeps the suite's answer in the report file", "zoo/harness/runner.py",
             "        for dataset, sentences in answers:  # the suite's answer",
             "        for dataset, sentences in []:  # the suite's answer",
             ("tests/test_harness.py::test_zoo_run_ends_with_each_dataset_s_recommendation",)),
    Mutation("an image edited in place is taken for the one a run saw", "zoo/data/sources.py",
             "            contents, marker = None if files is None else", "            contents, marker = None if True else",
             ("tests/test_harness.py::test_finished_runs_on_a_folder_changed_since_are_named_not_taken_for_todays_"
              "images",)),
    Mutation("features of rows decoded another way are reused", "zoo/harness/features.py",
             '        "decode_version": DECODE_VERSION,', '        "decode_version": 2,',
             ("tests/test_performance.py::test_feature_cache_key_follows_what_changes_features_not_how_runs_carve_"
              "splits",)),
    Mutation("a dataset entry with only name and path is refused as an unknown dataset", "zoo/data/sources.py",
             '    if card is None and "source" not in entry and isinstance(entry.get("path"), str):',
             '    if False:',
             ("tests/test_data.py::test_an_entry_with_only_a_path_reads_a_folder_or_a_track_manifest",)),
    Mutation("zoo run FOLDER says only that no such suite file exists", "zoo/harness/suite.py",
             "        if path.is_dir():", "        if False:",
             ("tests/test_harness.py::test_a_folder_given_as_the_suite_is_answered_with_a_suite_that_runs_it",)),
    Mutation("a one-epoch run's training curves are an empty figure", "zoo/report/figures.py",
             '    style = {"marker": "o", "markersize": 3} if longest <= 30 else {}', "    style = {}",
             ("tests/test_report.py::test_training_curves_show_a_one_epoch_run_and_whole_epochs",)),
    Mutation("a leaderboard wider than the report's page widens the page", "zoo/report/templates/report.html.j2",
             " display: block; overflow-x: auto; max-width: 100%; }", " }",
             ("tests/test_report.py::test_html_opens_in_headless_chromium",)),
    Mutation("DINO's mask token trains without a gradient", "zoo/factory.py",
             "    freeze_unread_weights(model)  # after the mode", "    pass  # after the mode",
             ("tests/test_backbones.py::test_backbone_builds_with_every_compatible_head[dinov2_small]",)),
    Mutation("a segmentation head over SigLIP keeps its attention pooling, untrained", "zoo/factory.py",
             "    return bool(backbone_spec.pooled_layer) and head_spec.reads_pooled",
             "    return bool(backbone_spec.pooled_layer)",
             ("tests/test_backbones.py::test_backbone_builds_with_every_compatible_head[siglip_base]",)),
    Mutation("a worker's short runs are warned of tf.function retracing", "zoo/harness/stages.py",
             "    forget_tracing_history()\n", "    pass\n",
             ("tests/test_console.py::test_a_workers_short_runs_are_not_warned_of_retracing",)),
    Mutation("a resumed suite's ETA waits for its first run", "zoo/harness/runner.py",
             "    durations = finished_run_seconds(runs_dir, [r.run_id for r in _finished(selected, todo)])",
             "    durations = {}",
             ("tests/test_harness.py::test_a_resumed_suite_gives_an_eta_from_its_first_run",)),
    Mutation("zoo predict on a suite's folder says only that it holds no model", "zoo/predict.py",
             "        refuse_suite_folder(run_dir)\n", "        pass\n",
             ("tests/test_harness.py::test_predict_on_a_suite_folder_lists_its_runs_best_first",)),
    Mutation("a class name no font holds is drawn as empty boxes, a warning per glyph", "zoo/report/figures.py",
             "    return all(ord(character) in characters", "    return True or all(ord(character) in characters",
             ("tests/test_report.py::test_figures_draw_class_and_dataset_names_in_any_script_without_a_warning_per_"
              "glyph",)),
    Mutation("zoo typed alone answers with an argparse error", "zoo/cli.py",
             "    parser.set_defaults(func=help_of(parser))", "    commands.required = True",
             ("tests/test_console.py::test_zoo_or_a_command_group_typed_alone_prints_its_help",)),
    Mutation("zoo predict --model answers with the Keras model, not the exported file", "zoo/predict.py",
             "        if self._exported_predict is None:", "        if True or self._exported_predict is None:",
             ("tests/test_export.py::test_predict_answers_with_an_exported_copy_as_the_keras_model_does",)),
    Mutation("zoo report refuses --out for its report folder", "zoo/cli.py",
             'report.add_argument("-o", "--out", dest="o",', 'report.add_argument("-o", dest="o",',
             ("tests/test_console.py::test_every_command_that_writes_somewhere_takes_both_o_and_its_long_name",)),
    Mutation("a photo saved twice is carved into train and test alike", "zoo/data/splits.py",
             "    return plan if copies is None else keep_copies_together(plan, copies)", "    return plan",
             ("tests/test_data.py::test_a_file_saved_twice_is_never_trained_on_and_scored",)),
    Mutation("a photo copied into two classes goes unnamed", "zoo/data/folder.py",
             "            if torn:", "            if False:",
             ("tests/test_data.py::test_a_file_saved_twice_is_never_trained_on_and_scored",)),
    Mutation("a photo in two of a folder's own splits goes unnamed", "zoo/data/folder.py",
             "        if crossing:", "        if False:",
             ("tests/test_data.py::test_a_file_saved_twice_is_never_trained_on_and_scored",)),
    Mutation("the report keeps quiet about a test image copied from train", "zoo/report/render.py",
             '"data_notes": list(info.get("notes") or []),', '"data_notes": [],',
             ("tests/test_faults.py::test_a_messy_folder_runs_and_says_what_it_skipped_and_what_it_cannot_judge",)),
    Mutation("an image edited in place to the same byte size is taken for the one a run saw", "zoo/data/sources.py",
             "        return [self.scan.digests[f] for f in files]", "        return None",
             ("tests/test_harness.py::test_finished_runs_on_a_folder_changed_since_are_named_not_taken_for_todays_images",)),
    Mutation("every run recorded by an earlier zoo is taken for one that saw other images", "zoo/harness/preflight.py",
             '                 or source.signature(split, by_size=":c" not in signature) != signature]',
             "                 or source.signature(split) != signature]",
             ("tests/test_harness.py::test_finished_runs_on_a_folder_changed_since_are_named_not_taken_for_todays_images",)),
    Mutation("a classification entry's headline_metric is ignored", "zoo/metrics.py",
             '        return preferred or "accuracy"', '        return "accuracy"', ("tests/test_report.py::test_an_imbalanced_folder_is_ranked_by_the_metric_its_entry_chooses",)),
    Mutation("the report ranks by the card's metric, not the one the run recorded", "zoo/report/render.py",
             'frame["task"], self.dataset_info(frame))', 'frame["task"])', ("tests/test_report.py::test_an_imbalanced_folder_is_ranked_by_the_metric_its_entry_chooses",)),
    Mutation("an imbalanced folder goes without a word", "zoo/data/folder.py",
             '            if headline_metric in (None, "accuracy"):', "            if False:", ("tests/test_report.py::test_an_imbalanced_folder_is_ranked_by_the_metric_its_entry_chooses",)),
    Mutation("an entry's headline_metric is checked but not recorded", "zoo/data/sources.py",
             "        source.info.headline_metric = checked_headline_metric(config, source.info.task)",
             "        checked_headline_metric(config, source.info.task)", ("tests/test_report.py::test_an_imbalanced_folder_is_ranked_by_the_metric_its_entry_chooses",)),
    Mutation("a headline_metric that cannot rank the task is taken", "zoo/data/sources.py",
             "    if metric not in choices:", "    if False:", ("tests/test_report.py::test_an_imbalanced_folder_is_ranked_by_the_metric_its_entry_chooses",)),
    Mutation("zoo serve's leaderboard keeps quiet about a test image copied from train", "zoo/serve/study.py",
             '                                 "data_notes": list(builder.dataset_info(frame).get("notes") or []),',
             '                                 "data_notes": [],',
             ("tests/test_faults.py::test_a_messy_folder_runs_and_says_what_it_skipped_and_what_it_cannot_judge",)),
    Mutation("a class folder of HEIC photos only makes no class without a word", "zoo/data/folder.py",
             "        if empty:", "        if False:",
             ("tests/test_data.py::test_class_folders_without_a_usable_image_are_named",)),
    Mutation("an iPhone's HEIC photo is skipped though zoo's heic extra is installed", "zoo/data/images.py",
             "    if suffix in HEIF_SUFFIXES:\n        return heif_readable()",
             "    if suffix in HEIF_SUFFIXES:\n        return False",
             ("tests/test_input_path.py::test_an_iphone_s_heic_photos_are_read_upright_with_zoo_heic",)),
    Mutation("a class only the test split has goes unnamed", "zoo/data/folder.py",
             "            self._note_untrained_classes()\n", "",
             ("tests/test_data.py::test_a_class_the_test_split_has_and_train_has_not_is_named",)),
    Mutation("a Kaggle-style unlabelled test folder stops the scan", "zoo/data/folder.py",
             '            if split != "train" and self._note_unlabelled(split, folder):',
             "            if False:",
             ("tests/test_data.py::test_a_kaggle_style_unlabelled_test_folder_is_left_out_and_test_is_carved_from_train",)),
    Mutation("track smoothing on a manifest without tracks is let through to crash in a run", "zoo/harness/preflight.py",
             '        if run.postprocess and sources[key].tracks("train") is None:',
             "        if False:", ("tests/test_postprocess.py::test_a_manifest_of_path_and_label_alone_is_a_list_of_independent_images",)),
    Mutation("a path and label manifest is carved as if every image were a track", "zoo/data/tracks.py",
             "    def groups(self, split):\n        return self.rows[\"track_id\"]",
             "    def groups(self, split):\n        return self.rows[\"track_id\"] if self.rows[\"track_id\"] is not None "
             "else np.arange(len(self.rows[\"label\"]))", ("tests/test_postprocess.py::test_a_manifest_of_path_and_label_alone_is_a_list_of_independent_images",)),
    Mutation("a run finished on an earlier carving is taken for today's", "zoo/harness/preflight.py",
             "        elif not carved_as_now(run, source, Path(runs_dir) / run.run_id, plans):", "        elif False:",
             ("tests/test_harness.py::test_finished_runs_carved_otherwise_than_today_are_named",)),
    Mutation("split.group_by: folder is taken and ignored", "zoo/data/splits.py",
             '        groups = source.folder_groups("train") if "train" in labelled else None',
             '        groups = source.folder_groups("train") if "train" in labelled else None\n'
             '        groups = np.arange(len(groups)) if groups is not None and len(set(groups)) < len(groups) else groups',
             ("tests/test_data.py::test_split_group_by_folder_keeps_each_subfolder_on_one_side",)),
    Mutation("a manifest's tile edited in place to the same byte size is taken for the one a run saw",
             "zoo/data/tracks.py", "        return [self.digests[f] for f in files]", "        return None",
             ("tests/test_postprocess.py::test_a_changed_manifest_is_other_content_for_the_caches",)),
    Mutation("a phone's portrait photo reaches the model lying on its side", "zoo/data/images.py",
             "            array = np.asarray(upright(image, orientation))", "            array = np.asarray(image)",
             ("tests/test_input_path.py::test_phone_photos_are_read_upright_for_training_prediction_and_masks",)),
    Mutation("a WebP photo in a class folder is skipped as no image", "zoo/data/images.py",
             '".tif", ".tiff", ".webp"}', '".tif", ".tiff"}',
             ("tests/test_input_path.py::test_phone_photos_are_read_upright_for_training_prediction_and_masks",)),
    Mutation("a mask drawn on a turned photo's stored pixels is refused without the reason", "zoo/data/folder.py",
             "                                    + _turned_hint(probes[str(image_path)], mask.shape))",
             "                                    )",
             ("tests/test_input_path.py::test_phone_photos_are_read_upright_for_training_prediction_and_masks",)),
    Mutation("one slow check of the GPU check spends the time of the checks after it", "benchmarks/budget.py",
             "        return Budget(None) if left is None else Budget(max(left * min(1.0, fraction), 1e-3))\n",
             "        return self\n",
             ("tests/test_gpu_check.py::test_the_gpu_check_ends_within_its_budget_and_says_what_it_did_not_run",)),
    Mutation("the GPU check runs every check whatever --checks asks for", "benchmarks/gpu_check.py",
             "    args = parser.parse_args(argv)\n    started = time.perf_counter()\n",
             "    args = parser.parse_args(argv)\n    args.checks = list(SHARES)\n    started = time.perf_counter()\n",
             ("tests/test_gpu_check.py::test_the_gpu_check_runs_only_the_checks_asked_for",)),
    Mutation("the input benchmark copies every prepared batch to the host, a copy no run makes",
             "benchmarks/pipeline_throughput.py",
             "    iterate = iterators.get(keras.backend.backend(), adapter.get_numpy_iterator)\n",
             "    iterate = adapter.get_numpy_iterator\n",
             ("tests/test_gpu_check.py::test_the_input_benchmark_reads_batches_as_fit_does_on_jax",)),
    Mutation("the compile-time benchmark reads one setting's runs back as another's", "benchmarks/compile_time.py",
             "    out = folder / setting\n", '    out = folder / "shared"\n',
             ("tests/test_gpu_check.py::test_the_compile_time_benchmark_compiles_afresh_under_each_setting",)),
    Mutation("rows held on the device pair each image with another row's target", "zoo/data/prepare.py",
             "take(all_raw, chosen, axis=0)", "take(all_raw, chosen[::-1], axis=0)",
             ("tests/test_input_path.py::test_rows_held_on_the_device_give_the_same_batches",
              "tests/test_input_path.py::test_the_same_batches_with_and_without_tensorflow_and_on_every_backend")),
    Mutation("a worker of a pool measures its speed while the others run", "zoo/harness/sharing.py",
             "            for pid in sibling_workers():\n", "            for pid in []:\n",
             ("tests/test_workers.py::test_a_measurement_in_a_pool_pauses_every_other_worker_and_continues_them",
              "tests/test_workers.py::test_a_pool_gives_the_scores_of_one_worker_and_says_the_runs_shared_the_machine")),
    Mutation("a run's speed is timed without pausing the pool's other workers", "zoo/harness/stages.py",
             "    speed = inference_speed(predict_model, spec.input(data.info).shape, runtime.global_batch, quiet=alone)\n",
             "    speed = inference_speed(predict_model, spec.input(data.info).shape, runtime.global_batch)\n",
             ("tests/test_workers.py::test_a_pool_gives_the_scores_of_one_worker_and_says_the_runs_shared_the_machine",)),
    Mutation("a worker that dies measuring leaves the pool's others paused for ever", "zoo/harness/executors.py",
             "            self.pool.resume_all()  # it may have died measuring, with the others paused\n",
             "            pass\n",
             ("tests/test_workers.py::test_a_worker_killed_while_the_others_are_paused_fails_its_run_and_the_suite_goes_on",)),
    Mutation("a pool's rows say each run had the machine to itself", "zoo/harness/sharing.py",
             "    return int(value) if value.strip() else None\n", "    return 1 if value.strip() else None\n",
             ("tests/test_workers.py::test_a_pool_gives_the_scores_of_one_worker_and_says_the_runs_shared_the_machine",)),
    Mutation("a pool's epoch lines do not say which run they belong to", "zoo/harness/stages.py",
             "        shared = (runs_at_once() or 1) > 1  # several runs print at once: each line names its run\n",
             "        shared = False\n",
             ("tests/test_workers.py::test_a_pool_gives_the_scores_of_one_worker_and_says_the_runs_shared_the_machine",)),
    Mutation("precise BatchNorm's forward compiled ahead keeps the training momentum", "zoo/harness/precise_bn.py",
             "        with population_momenta(trained_batchnorm_layers(model)):\n",
             "        with contextlib.nullcontext():\n",
             ("tests/test_runtime.py::test_programs_compiled_ahead_are_the_ones_later_calls_run_with_the_same_results",)),
    Mutation("a run's inference is compiled on the main thread after training, not ahead", "zoo/harness/stages.py",
             "        if lowered is None:\n", "        if True:\n",
             ("tests/test_compilation.py::test_later_runs_of_a_sweep_compile_nothing_new",)),
    Mutation("ZOO_COMPILE_AHEAD=0 still compiles ahead", "zoo/harness/stages.py",
             '                or os.environ.get(COMPILE_AHEAD_ENV, "").strip() == "0"):\n', "                ):\n",
             ("tests/test_compilation.py::test_compiling_ahead_changes_no_number_of_a_run",)),
]


def run_tests(tests, timeout: float) -> tuple[bool, float]:
    """Whether the tests failed, and how long they took."""
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        failed = result.returncode != 0
    except subprocess.TimeoutExpired:
        failed = True  # a mutation that hangs the product is caught, if slowly
    return failed, time.perf_counter() - start


def apply(mutation: Mutation, timeout: float) -> dict:
    path = ROOT / mutation.path
    source = path.read_text()
    if source.count(mutation.original) != 1:
        return {"mutation": mutation.name, "file": mutation.path, "outcome": "stale", "seconds": 0.0}
    try:
        path.write_text(source.replace(mutation.original, mutation.mutated))
        failed, seconds = run_tests(mutation.tests, timeout)
    finally:
        path.write_text(source)
    return {"mutation": mutation.name, "file": mutation.path, "outcome": "killed" if failed else "survived",
            "seconds": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the mutations whose name contains this text")
    parser.add_argument("--csv", help="write the outcomes to this CSV file")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one mutation's tests")
    args = parser.parse_args()

    def stop(signum, frame):  # a stopped run puts the mutated file back too (apply's finally)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    rows = []
    for mutation in chosen:
        rows.append(apply(mutation, args.timeout))
        row = rows[-1]
        print(f"{row['outcome']:9} {row['seconds']:7.1f}s  {mutation.name}  ({mutation.path})", flush=True)
    judged = [r for r in rows if r["outcome"] != "stale"]
    killed = sum(r["outcome"] == "killed" for r in judged)
    print(f"mutation score: {killed}/{len(judged)} killed"
          + (f"; {len(rows) - len(judged)} stale" if len(rows) != len(judged) else ""))
    if args.csv:
        table = rows
        if args.only and Path(args.csv).is_file():
            # A partial rerun replaces its own rows of an earlier full run and keeps the others, in order.
            fresh = {row["mutation"]: row for row in rows}
            earlier = list(csv.DictReader(open(args.csv)))
            table = [fresh.pop(row["mutation"], row) for row in earlier] + list(fresh.values())
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["mutation", "file", "outcome", "seconds"])
            writer.writeheader()
            writer.writerows(table)
    return 0 if killed == len(judged) and judged else 1


if __name__ == "__main__":
    sys.exit(main())
