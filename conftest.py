"""pytest configuration shared by the unit tests and the nbval run of the notebooks."""

import signal

WIDGET = "application/vnd.jupyter.widget-view+json"


def pytest_collectstart(collector):
    # nbval compares stderr too, but stderr only carries progress
    # bars (whose rates change run to run) and library warnings;
    # what a chapter teaches goes to stdout and display outputs.
    if hasattr(collector, "skip_compare"):
        collector.skip_compare = (*collector.skip_compare, "stderr")


def without_widgets(outputs):
    """Outputs less progress-bar widgets, found only where ipywidgets is installed."""
    return [o for o in outputs if WIDGET not in o.get("data", {})]


def pytest_configure(config):
    # The Ctrl-C tests need SIGINT to raise KeyboardInterrupt, here and in the processes
    # they start. A shell starts background jobs (`make test &`, nohup) with SIGINT
    # ignored, which Python and every child would keep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # With ipywidgets installed (otter-grader brings it; Colab has it), tqdm.auto bars
    # of transformers and datasets become widget outputs whose text/plain holds rates
    # and timings; without it they go to stderr. Compare neither, so a chapter's stored
    # outputs match in both environments.
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return
    compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, without_widgets(test), without_widgets(ref), skip_compare)

    IPyNbCell.compare_outputs = compare_outputs
