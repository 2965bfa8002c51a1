"""pytest configuration shared by the unit tests and the nbval run over the notebooks."""


def pytest_collectstart(collector):
    # nbval compares stderr too, but stderr only carries progress bars (whose rates change run to
    # run) and library warnings; what a chapter teaches goes to stdout and display outputs.
    if hasattr(collector, "skip_compare"):
        collector.skip_compare = (*collector.skip_compare, "stderr")
