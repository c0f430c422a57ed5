"""The README's first lines are the two commands a newcomer copies: a lean install for the main job, the
dev install for the tests; .ci/run executes the second one as written."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent


def first_block_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    block = lines[start + 1:lines.index("```", start + 1)]
    return {line: block[i + 1] for i, line in enumerate(block) if line.startswith("# Install and run")}


def test_the_main_job_installs_only_what_the_quickstart_needs_and_the_tests_install_dev():
    commands = first_block_commands()
    main_job = next(c for k, c in commands.items() if k.startswith("# Install and run the main job"))
    tests = next(c for k, c in commands.items() if k.startswith("# Install and run the tests"))
    assert "pip install -e . &&" in main_job and "[" not in main_job
    assert main_job.endswith("zoo run benchmarks/quickstart.yaml")
    assert 'pip install -e ".[dev]"' in tests and "pytest" in tests


def test_ci_runs_the_readmes_test_command(tmp_path):
    """The extraction .ci/run uses gives the README's line; a README without it makes CI fail at once."""
    script = (ROOT / ".ci" / "run").read_text()
    extract = next(line for line in script.splitlines() if line.startswith("test_command=$(awk"))
    awk = extract[len("test_command=$("):-1]
    found = subprocess.run(["bash", "-c", awk], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert found == next(c for k, c in first_block_commands().items() if k.startswith("# Install and run the tests"))
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(script)
    (tmp_path / "README.md").write_text("# zoo\n\n```bash\n# Install and run the main job:\npip install -e .\n```\n")
    drifted = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=600,
                             env={"PATH": "/usr/bin:/bin"})  # no apt-get run here: chromium is found or not
    assert drifted.returncode == 1 and "no '# Install and run the tests' line" in drifted.stderr
