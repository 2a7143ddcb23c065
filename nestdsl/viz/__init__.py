"""Pictures of a checked spec: the level graph (graphviz) and the update timeline (matplotlib).

    from nestdsl.viz import level_graph, timeline_figure
    level_graph(nestdsl.load("hope")).render("hope", format="svg")

Neither module imports its drawing library until it is used, so `import nestdsl.viz` is cheap.
"""

from nestdsl.viz.level_graph import EDGE_STYLES, describe, level_graph
from nestdsl.viz.timeline import default_window, timeline_figure

__all__ = ["EDGE_STYLES", "default_window", "describe", "level_graph", "timeline_figure"]
