"""pytest configuration shared by the unit tests and the nbval run over the notebooks."""


def pytest_collectstart(collector):
    # nbval compares stderr too, but stderr only carries progress bars (whose rates change run to
    # run) and library warnings; what a chapter teaches goes to stdout and display outputs.
    if hasattr(collector, "skip_compare"):
        collector.skip_compare = (*collector.skip_compare, "stderr")


WIDGET = "application/vnd.jupyter.widget-view+json"


def pytest_configure(config):
    # With ipywidgets installed (otter-grader, the `instructor` extra, brings it), tqdm.auto draws
    # progress bars as widgets instead of on stderr. The stored notebooks have no widgets: leave
    # widget outputs out of the comparison, as stderr bars are.
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return
    if getattr(IPyNbCell.compare_outputs, "drops_widgets", False):
        return
    compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        test = [o for o in test if WIDGET not in o.get("data", {})]
        return compare(self, test, ref, skip_compare)

    compare_outputs.drops_widgets = True
    IPyNbCell.compare_outputs = compare_outputs
