"""Comparison reports (markdown and HTML) from a results store."""


def write_report(out_dir, formats=("md", "html"), report_dir=None, latency_budget_ms=None, notes=None,
                 size_budget_mb=None, detailed_models=None):
    """See zoo.report.render.write_report (imported lazily: matplotlib is slow to import)."""
    from zoo.report.render import write_report as _write

    return _write(out_dir, formats=formats, report_dir=report_dir, latency_budget_ms=latency_budget_ms, notes=notes,
                  size_budget_mb=size_budget_mb, detailed_models=detailed_models)
