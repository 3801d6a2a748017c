"""sigsim's experiments: sweep configs, the ``sigsim`` command line, plots and reports.

``experiments.cli.main`` is the console script; :mod:`experiments.backends` is the one
place that calls the profiler (``profiling``) and the cost model (``simulator``).
"""
