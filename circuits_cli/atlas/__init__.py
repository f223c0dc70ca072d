"""The atlas: a browsable static site of a model's units (OpenAI Microscope for your own model).

::

    from circuits_cli.atlas import AtlasSettings, build_atlas, plan_atlas
    plan = plan_atlas(model, "site/", "mixed4a,mixed4b", images="scenes/",
                      settings=AtlasSettings(steps=128))
    result = build_atlas(plan)      # site/index.html

Every page is built from the project's caches: feature visualizations from the render cache
(:mod:`circuits_cli.render`), dataset examples from the activation store
(:mod:`circuits_cli.evidence`), connections from the expanded weights
(:mod:`circuits_cli.connections`). A re-run skips every unit page that is current; shards
(``shard=(K, N)``) split the units of one atlas across processes. :mod:`.site` keeps the manifest
of what the atlas wrote; :mod:`.pages` holds the page layout and the Jinja2 templates.
"""

from .build import (
    FEATURES_FORMAT,
    KINDS,
    AtlasPlan,
    AtlasResult,
    AtlasSettings,
    build_atlas,
    load_features,
    parse_layers,
    plan_atlas,
    reader_of,
)

__all__ = ["AtlasPlan", "AtlasResult", "AtlasSettings", "build_atlas", "plan_atlas",
           "parse_layers", "load_features", "reader_of", "KINDS", "FEATURES_FORMAT"]
