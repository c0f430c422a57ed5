"""`zoo serve`: a real server process on 127.0.0.1 over a small finished suite (and one being written),
driven over HTTP and in a real headless Chromium (Playwright with the system's browser)."""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

SUITE = {
    "name": "serving",
    "datasets": ["synthetic_terrain", "synthetic_landcover"],
    "backbones": ["baseline_cnn", "mobilenet_v3_small"],
    "heads": ["linear", "unet"],
    "overrides": [{"match": {"backbone": "mobilenet_v3_small", "head": "unet"}, "set": {"train": {"epochs": 1}}}],
    "train": {"image_size": 32, "batch_size": 16, "epochs": 2, "steps_per_epoch": 3, "precise_bn": {"batches": 2}},
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def zoo(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``zoo serve`` in its own process, stopped by its process id."""

    def __init__(self, *folders, token=None, extra=()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "zoo.cli", "serve", *map(str, folders), "--port", str(self.port), *extra]
        if token:
            command += ["--token", token]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"zoo serve ended: {self.process.stdout.read()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError("zoo serve did not start listening within 120 s")

    def get(self, path, headers=None):
        """(status, body bytes, headers) of GET ``path``; errors are answers too."""
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def post_files(self, path, files, fields=None):
        boundary = "zoo-test-boundary"
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for filename, content in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.base + path, data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished four-run suite (two classification models, two segmentation ones) and its server."""
    root = tmp_path_factory.mktemp("serve")
    suite = root / "suite.yaml"
    suite.write_text(json.dumps(SUITE))
    result = zoo("run", suite, "--out", root / "out", "--no-report")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    server = Server(root / "out")
    yield root / "out", server
    server.stop()


def run_ids(out: Path, dataset=None) -> list[str]:
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    return sorted(table.loc[table["dataset"] == dataset, "run_id"] if dataset else table["run_id"])


def url(run_id: str) -> str:
    return urllib.parse.quote(run_id)


def printed_top1(stdout: str) -> tuple[str, str]:
    """(label, percentage) of the first answer ``zoo predict`` printed ("  99.8%  urban")."""
    line = next(line for line in stdout.splitlines() if line.startswith("  ") and "%" in line)
    percentage, label = line.split(None, 1)
    return label.strip(), percentage


def image_file(path: Path, size=48, seed=0, bands=3) -> Path:
    """A random picture: PNG for three bands, TIFF for more (the land-cover tiles have four)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, bands), dtype=np.uint8)
    if bands == 3:
        Image.fromarray(pixels).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, pixels)
    return path


# -- HTTP ----------------------------------------------------------------------------------------------
def test_the_study_lists_every_run_done_with_time_taken(study):
    out, server = study
    status, body, _ = server.get("/s/0/api/runs")
    state = json.loads(body)
    assert status == 200 and state["total"] == 4 and state["counts"] == {"done": 4}
    assert {r["run_id"] for r in state["rows"]} == set(run_ids(out))
    assert all(r["elapsed_seconds"] > 0 and r["epochs_done"] >= 1 for r in state["rows"])


@pytest.mark.parametrize("path", [
    "/s/0/run/RUN/files/..%2F..%2Fsuite.yaml", "/s/0/run/RUN/files/%2Fetc%2Fpasswd", "/s/0/run/..%2F..%2F/files/x",
    "/s/0/run/RUN/files/../../../results.csv", "/s/0/run/.RUN.partial", "/s/0/run/RUN/files/outside",
    "/s/0/run/linked/files/passwd", "/s/1/", "/s/-1/", "/static/..%2Fapp.py", "/s/0/run/RUN/example/100000.png",
])
def test_paths_outside_the_served_folder_are_404(study, path):
    out, server = study
    run_id = run_ids(out)[0]
    links = [(out / "runs" / run_id / "outside", "/etc/passwd"), (out / "runs" / "linked", "/etc")]
    for link, target in links:
        link.symlink_to(target)
    try:
        status, body, _ = server.get(path.replace("RUN", url(run_id)))
    finally:
        for link, _ in links:
            link.unlink()
    assert status == 404 and b"root:" not in body


def test_a_run_page_says_where_the_run_s_time_went(study):
    out, server = study
    run_id = run_ids(out)[0]
    status, body, _ = server.get(f"/s/0/run/{url(run_id)}")
    stages = json.loads((out / "runs" / run_id / "metrics.json").read_text())["stage_seconds"]
    shown = re.search(r'<p id="time">The whole run ([0-9.]+) s: (.*?)\.</p>', body.decode())
    assert status == 200 and shown, body.decode()[:3000]
    assert [part.split(" ")[0] for part in shown.group(2).split(" · ")] == list(stages)
    # A land-cover run names the classes its scores leave out, and how many pixels went to them.
    landcover = run_ids(out, "synthetic_landcover")[0]
    metrics = json.loads((out / "runs" / landcover / "metrics.json").read_text())
    page = server.get(f"/s/0/run/{url(landcover)}")[1].decode()
    assert (f"Left out of the loss and the scores: no_data, clouds. {metrics['pixels_predicted_as_ignored']:,} of "
            f"the") in page


def test_a_run_page_shows_its_task_s_figures_and_the_leaderboard_counts_as_the_report_does(study):
    import pandas as pd

    out, server = study
    table = pd.read_csv(out / "results.csv").set_index("run_id")

    def figures(run_id):
        page = server.get(f"/s/0/run/{url(run_id)}")[1].decode()
        row = re.search(r'<table class="figures">\s*<tr>(.*?)</tr>', page, re.S).group(1)
        return dict(re.findall(r"<th>([^<]+)</th><td>([^<]+)</td>", row))

    terrain, landcover = run_ids(out, "synthetic_terrain")[0], run_ids(out, "synthetic_landcover")[0]
    shown = figures(terrain)
    assert shown["accuracy"] == f"{table.loc[terrain, 'accuracy']:.4f}" and "mIoU" not in shown, shown
    assert shown["macro F1"] == f"{table.loc[terrain, 'macro_f1']:.4f}"
    shown = figures(landcover)  # a segmentation run's accuracy is its pixels'
    assert "macro F1" not in shown and shown["pixel accuracy"] == f"{table.loc[landcover, 'accuracy']:.4f}", shown
    assert (shown["mIoU"], shown["KL score"]) == (f"{table.loc[landcover, 'miou']:.4f}",
                                                  f"{table.loc[landcover, 'kl_score']:.4f}")
    board = server.get("/s/0/leaderboard")[1].decode()
    for params in table["params"]:
        assert f'<td data-value="{params}">{int(params):,}</td>' in board


def test_files_of_a_run_are_served_read_only(study):
    out, server = study
    run_id = run_ids(out)[0]
    status, body, _ = server.get(f"/s/0/run/{url(run_id)}/files/run.json")
    assert status == 200 and json.loads(body)["run_id"] == run_id
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
    for path in ("/s/0/", "/s/0/leaderboard?latency=1", f"/s/0/run/{url(run_id)}",
                 f"/s/0/run/{url(run_id)}/example/0.png", f"/s/0/compare?run={url(run_id)}&run={url(run_ids(out)[1])}"):
        assert server.get(path)[0] == 200, path
    after = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file())
    assert before == after


def test_bad_uploads_get_clear_answers_never_a_server_error(study, tmp_path):
    out, server = study
    predict = f"/s/0/run/{url(run_ids(out, 'synthetic_terrain')[0])}/predict"
    status, reply = server.post_files(predict, [("notes.txt", b"not an image"), ("<b>broken</b>.png", b"\x89PNG\r\n")])
    assert status == 200
    assert [a["name"] for a in reply["answers"]] == ["notes.txt", "<b>broken</b>.png"]
    assert all("cannot be read as an image" in a["error"] and "zoo-serve-" not in a["error"] for a in reply["answers"])
    status, reply = server.post_files(predict, [])
    assert status == 400 and "no image was sent" in reply["error"]
    status, reply = server.post_files(predict, [(f"{i}.png", image_file(tmp_path / f"{i}.png").read_bytes())
                                                for i in range(17)])
    assert status == 400 and "16" in reply["error"]
    status, reply = server.post_files(predict, [("huge.png", b"\0" * (10 * 1024 * 1024 + 10))])
    assert status == 200 and "larger than 10 MB" in reply["answers"][0]["error"]
    request = urllib.request.Request(server.base + predict, data=b"garbage", method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400 and b"cannot be read" in refused.value.read()
    assert server.process.poll() is None


def test_an_upload_gets_the_same_top1_as_zoo_predict(study, tmp_path):
    out, server = study
    for run_id, name, bands in ((run_ids(out, "synthetic_terrain")[0], "photo.png", 3),
                                (run_ids(out, "synthetic_landcover")[0], "tile.tif", 4)):
        picture = image_file(tmp_path / name, size=40, seed=3, bands=bands)
        status, reply = server.post_files(f"/s/0/run/{url(run_id)}/predict", [(name, picture.read_bytes())],
                                          {"top_k": "3"})
        answer = reply["answers"][0]
        assert status == 200 and answer["error"] is None and len(answer["top_k"]) == 3
        printed = zoo("predict", out / "runs" / run_id, picture, "--top-k", "1")
        assert printed.returncode == 0, printed.stderr[-2000:]
        assert printed_top1(printed.stdout) == (answer["top_k"][0]["label"], f"{answer['top_k'][0]['probability']:.1%}")
        if "landcover" in run_id:
            assert answer["overlay"].startswith("data:image/png;base64,")


def test_concurrent_requests_all_answer_alike(study, tmp_path):
    out, server = study
    run_id = run_ids(out, "synthetic_terrain")[0]
    picture = image_file(tmp_path / "same.png", seed=5).read_bytes()

    def ask(number):
        if number % 2:
            return server.post_files(f"/s/0/run/{url(run_id)}/predict", [("same.png", picture)])[1]["answers"][0]["top_k"]
        status, body, _ = server.get("/s/0/leaderboard?latency=50")
        return status, body.count(b"<tr data-family")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    predictions, pages = answers[1::2], answers[0::2]
    assert all(p == predictions[0] for p in predictions)
    assert all(p == (200, 4) for p in pages)  # 2 terrain + 2 landcover models


def test_the_compare_page_gives_zoo_compare_s_p_value(study):
    out, server = study
    a, b = run_ids(out, "synthetic_terrain")
    expected = json.loads(zoo("compare", out, a, b, "--json").stdout)["p_value"]
    status, body, _ = server.get(f"/s/0/compare?run={url(a)}&run={url(b)}")
    text = body.decode()
    assert status == 200 and f'data-value="{expected!r}"' in text or f'data-value="{expected}"' in text


def test_leaderboards_are_computed_once_however_many_ask_at_start(study, monkeypatch):
    """zoo serve computes a study's leaderboards in the background as it starts; a visit meanwhile waits
    for that computation instead of starting its own, and gets the same boards."""
    import threading

    from zoo.report import render
    from zoo.serve.study import Study

    out, _ = study
    built, original = [], render.ReportBuilder.__init__
    started = threading.Event()

    def counted(self, *args, **kwargs):
        built.append(threading.current_thread().name)
        started.set()
        time.sleep(0.5)  # the visit below surely comes while this computation runs
        original(self, *args, **kwargs)

    monkeypatch.setattr(render.ReportBuilder, "__init__", counted)
    served = Study(out)
    warming = served.warm()
    assert started.wait(60)
    boards = served.leaderboards()  # asked while the background computation runs (or just after)
    warming.join(60)
    assert len(built) == 1 and built[0].startswith("zoo-serve-warm")
    assert served.leaderboards() == boards and len(built) == 1
    assert {s["name"] for s in boards["sections"]} == {"synthetic_terrain", "synthetic_landcover"}


def test_a_token_is_required_on_every_request_when_set(study):
    out, _ = study
    server = Server(out, token="s3cret")
    try:
        assert server.get("/s/0/api/runs")[0] == 401
        assert server.get("/s/0/api/runs?token=wrong")[0] == 401
        status, _, headers = server.get("/s/0/api/runs?token=s3cret")
        assert status == 200 and "zoo_serve_token=s3cret" in headers.get("set-cookie", "")
        assert server.get("/s/0/api/runs", {"Cookie": "zoo_serve_token=s3cret"})[0] == 200
        assert server.get("/s/0/api/runs", {"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        server.stop()


def test_another_host_without_a_token_is_refused_before_listening(study):
    out, _ = study
    result = zoo("serve", out, "--host", "0.0.0.0", "--port", str(free_port()), timeout=120,
                 env={k: v for k, v in os.environ.items() if k != "ZOO_SERVE_TOKEN"})
    assert result.returncode == 2
    assert "warning: serving on 0.0.0.0" in result.stderr and "--token" in result.stderr.splitlines()[-1]


def test_without_the_serve_extra_zoo_serve_says_what_to_install(study):
    out, _ = study
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None; "
            "from zoo.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "serve", str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and "pip install -e '.[serve]'" in result.stderr


def test_a_damaged_run_and_a_damaged_table_show_as_such_and_the_rest_still_shows(study, tmp_path):
    out, _ = study
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    damaged = run_ids(copy, "synthetic_terrain")[0]
    (copy / "runs" / damaged / "result.json").write_text('{"status": "ok", "run_')
    server = Server(out, copy)  # two folders: the intact one stays study 0
    try:
        index = server.get("/")[1].decode()
        assert index.count('href="/s/') >= 2 and str(copy) in index
        assert json.loads(server.get("/s/0/api/runs")[1])["counts"] == {"done": 4}
        state = json.loads(server.get("/s/1/api/runs")[1])
        states = {r["run_id"]: r for r in state["rows"]}
        assert states[damaged]["state"] == "damaged" and "result.json" in states[damaged]["problem"]
        assert sum(r["state"] == "done" for r in state["rows"]) == 3
        page = server.get("/s/1/leaderboard")[1].decode()
        assert f"run {damaged} is left out" in page and page.count("<tr data-family") == 3
        assert server.get(f"/s/1/run/{url(damaged)}")[0] == 200
        (copy / "results.csv").write_text('"unclosed,quote\nrun_id\n')
        page = server.get("/s/1/leaderboard")[1].decode()
        assert "cannot be read as a table" in page
        assert json.loads(server.get("/s/1/api/runs")[1])["total"] == 4
    finally:
        server.stop()


def test_a_run_finishing_while_the_page_is_open_shows_up(tmp_path):
    """A suite being written: the study shows it running, then done, without anything reloaded."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({**SUITE, "name": "writing", "datasets": ["synthetic_terrain"], "overrides": [],
                                 "backbones": ["baseline_cnn"], "heads": ["linear"], "seeds": [0, 1],
                                 "train": {**SUITE["train"], "epochs": 4}}))
    out = tmp_path / "out"
    planned = zoo("plan", suite, "--out", out, "--record")
    assert planned.returncode == 0 and (out / "plan.json").is_file(), planned.stdout[-2000:] + planned.stderr[-2000:]
    log = open(tmp_path / "run.log", "w")
    writer = subprocess.Popen([sys.executable, "-m", "zoo.cli", "run", str(suite), "--out", str(out), "--no-report"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(out)
    seen, hosts = set(), set()
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            state = json.loads(server.get("/s/0/api/runs")[1])
            seen |= {r["state"] for r in state["rows"]}
            hosts |= {r["host"] for r in state["rows"] if r["state"] == "running"}
            if state["counts"].get("done") == 2:
                break
            time.sleep(0.5)
        assert state["counts"] == {"done": 2}, (state, (tmp_path / "run.log").read_text()[-3000:])
        assert {"pending", "running"} <= seen, seen
        assert hosts == {socket.gethostname()}
        # The plan's estimate beside the time each run took.
        assert all(r["estimate_seconds"] > 0 and r["elapsed_seconds"] > 0 for r in state["rows"])
        # zoo run's ETA comes from the recorded plan, then from the plan as the first run compared with it.
        lines = [line for line in (tmp_path / "run.log").read_text().splitlines() if "(ETA" in line]
        assert "from zoo plan's estimates)" in lines[0] and "as the finished runs went)" in lines[1], lines
    finally:
        server.stop()
        if writer.poll() is None:
            os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
        log.close()


# -- in a real browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (CI installs Debian's chromium): the browser tests cannot run")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in .[dev]): the browser tests cannot run")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def test_browser_study_page_lists_every_run(study, page):
    out, server = study
    page.goto(server.base + "/")
    assert page.url.endswith("/s/0/")
    page.wait_for_timeout(2500)  # one live refresh: the table is rebuilt by the page's script
    shown = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.run)")
    assert sorted(shown) == run_ids(out)
    assert page.locator("#runs tbody td.state").all_text_contents() == ["done"] * 4


def test_browser_leaderboard_sorts_and_filters(study, page):
    _, server = study
    page.goto(server.base + "/s/0/leaderboard")
    section = page.locator('section[data-dataset="synthetic_terrain"]')
    speeds = lambda: [float(v) for v in section.locator("tbody tr td:nth-child(7)").evaluate_all(  # noqa: E731
        "cells => cells.map(c => c.dataset.value)")]
    section.locator("th", has_text="images/s").click()
    assert speeds() == sorted(speeds())
    section.locator("th", has_text="images/s").click()
    assert speeds() == sorted(speeds(), reverse=True)
    section.locator('select[data-key="family"]').select_option("mobilenet")
    visible = section.locator("tbody tr:not([hidden])")
    assert visible.count() == 1 and "mobilenet_v3_small" in visible.inner_text()
    section.locator('select[data-key="family"]').select_option("")
    section.locator("input.filter").fill("baseline")
    assert visible.count() == 1 and "baseline_cnn" in visible.inner_text()


def test_browser_a_budget_changes_the_recommendation(study, page):
    _, server = study
    page.goto(server.base + "/s/0/leaderboard")
    recommendation = page.locator('section[data-dataset="synthetic_terrain"] .recommendation')
    assert "budget" not in recommendation.inner_text()
    page.fill("#latency", "0.000001")
    page.click("#apply-budgets")
    page.wait_for_load_state()
    assert "No model meets the 1e-06 ms latency budget" in recommendation.inner_text()
    page.fill("#latency", "100000")
    page.click("#apply-budgets")
    page.wait_for_load_state()
    assert "Best within the 100000 ms latency budget" in recommendation.inner_text()


def test_browser_comparing_two_runs_shows_zoo_compare_s_p_value(study, page):
    out, server = study
    a, b = run_ids(out, "synthetic_terrain")
    expected = json.loads(zoo("compare", out, a, b, "--json").stdout)["p_value"]
    page.goto(server.base + "/s/0/leaderboard")
    section = page.locator('section[data-dataset="synthetic_terrain"]')
    for box in section.locator('input[type="checkbox"]').all():
        box.check()
    section.locator("button.compare-button").click()
    page.wait_for_load_state()
    shown = float(page.locator("#tests td.p-value").first.get_attribute("data-value"))
    assert shown == expected
    assert page.locator("#tests td.p-value").first.inner_text() == f"{expected:.4g}"


def test_browser_an_uploaded_image_gets_zoo_predict_s_top1(study, page, tmp_path):
    out, server = study
    run_id = run_ids(out, "synthetic_terrain")[1]
    picture = image_file(tmp_path / "upload.png", seed=11)
    printed = zoo("predict", out / "runs" / run_id, picture, "--top-k", "1")
    page.goto(server.base + f"/s/0/run/{url(run_id)}")
    page.set_input_files("#images", str(picture))
    first = page.locator("#answers ol.top-k li").first
    first.wait_for(timeout=60_000)
    assert first.get_attribute("data-label") == printed_top1(printed.stdout)[0]


def test_browser_escapes_what_users_name(study, page, tmp_path):
    out, server = study
    run_id = run_ids(out, "synthetic_terrain")[0]
    page.goto(server.base + f"/s/0/run/{url(run_id)}")
    page.set_input_files("#images", [{"name": "<img src=x onerror=alert(1)>.txt", "mimeType": "text/plain",
                                      "buffer": b"hello"}])
    page.locator("#answers .answer .error").wait_for(timeout=60_000)
    assert page.locator("#answers img").count() == 0
    assert "<img src=x onerror=alert(1)>.txt" in page.locator("#answers strong").inner_text()


def test_browser_a_path_traversal_url_gets_404(study, page):
    _, server = study
    response = page.goto(server.base + "/s/0/run/..%2F..%2Fsuite.yaml")
    assert response.status == 404


def test_the_leaderboard_page_shows_the_results_a_dataset_card_cites(study, tmp_path, monkeypatch):
    """Beside zoo's own leaderboard, the published results of the dataset's card (as in the report), escaped."""
    out, _ = study
    cards = tmp_path / "cards"
    shutil.copytree(Path(__file__).resolve().parent.parent / "datasets", cards)
    card = cards / "synthetic_terrain.yaml"
    card.write_text(card.read_text().replace("reference_results: []", "reference_results:\n  - {source: \"<b>a paper</b>"
                                             "\", model: a ResNet, metric: accuracy, value: 0.9857}"))
    monkeypatch.setenv("ZOO_DATASETS_DIR", str(cards))  # the server's process reads these cards
    server = Server(out)
    try:
        status, body, _ = server.get("/s/0/leaderboard")
    finally:
        server.stop()
    page = body.decode()
    assert status == 200 and "Published results on synthetic_terrain" in page and "0.9857" in page
    assert "<b>a paper</b>" not in page and "&lt;b&gt;a paper&lt;/b&gt;" in page
    assert page.count("Published results on") == 1  # the land cover's card cites none
