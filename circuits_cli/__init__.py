"""circuits: circuit discovery in vision models, in the tradition of the Distill Circuits thread.

The pipeline, one module each: model zoo (:mod:`circuits_cli.zoo`) -> activation hooks
(:mod:`circuits_cli.hooks`) -> rendering (:mod:`circuits_cli.render`) -> connections
(:mod:`circuits_cli.connections`) -> tracing (:mod:`circuits_cli.trace`) -> reports
(:mod:`circuits_cli.reports`). The ``circuits`` command line is a thin layer over these.
"""

__version__ = "0.1.0"
