"""Comparison reports (markdown and HTML) from a results store."""


def write_report(out_dir, **options):
    """See zoo.report.render.write_report (imported lazily: matplotlib is slow to import)."""
    from zoo.report.render import write_report as _write

    return _write(out_dir, **options)
