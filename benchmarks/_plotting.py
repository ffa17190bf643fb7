"""matplotlib for the benchmark scripts, or None with a note when it is not installed."""

from __future__ import annotations


def pyplot():
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return None
    matplotlib.use("Agg")  # files, no screen
    import matplotlib.pyplot as plt

    return plt
