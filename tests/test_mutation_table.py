"""benchmarks/mutations.py breaks the product on purpose, one promise at a time, and runs the tests that guard
it. A mutation whose line has since moved or changed, or whose test was renamed, would only say "stale" (or
pass for a missing test) when someone runs the table: these checks keep it true with every change."""
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mutation_table():
    spec = importlib.util.spec_from_file_location("zoo_mutations", ROOT / "benchmarks" / "mutations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module.MUTATIONS


def test_every_mutation_finds_the_one_line_it_breaks_and_names_tests_that_exist():
    mutations = mutation_table()
    assert len({m.name for m in mutations}) == len(mutations)  # --only picks them by name
    for mutation in mutations:
        source = (ROOT / mutation.path).read_text()
        assert source.count(mutation.original) == 1, (mutation.name, mutation.path)
        assert mutation.mutated != mutation.original, mutation.name
        for test in mutation.tests:
            file, _, name = test.partition("::")
            assert (ROOT / file).is_file(), (mutation.name, test)
            if name:
                function = name.split("[")[0]
                assert re.search(rf"^def {re.escape(function)}\(", (ROOT / file).read_text(), re.MULTILINE), \
                    (mutation.name, test)


def test_the_committed_table_has_one_killed_row_for_each_mutation():
    """reports/mutations.csv is what the README's count reports: a mutation added without being run (or one that
    survived) shows here, not only when someone reruns the whole table."""
    import csv

    rows = list(csv.DictReader(open(ROOT / "reports" / "mutations.csv")))
    names = [m.name for m in mutation_table()]
    assert sorted(row["mutation"] for row in rows) == sorted(names)
    assert [row["mutation"] for row in rows if row["outcome"] != "killed"] == []
    readme = (ROOT / "README.md").read_text()
    assert f"Each of the {len(names)} mutations is one row of" in readme  # the README counts what the table holds
