"""Pictures of a checked spec: the level graph (graphviz) and the update timeline (matplotlib).

    from nestdsl.viz import describe, level_graph, timeline_figure
    picture = describe(nestdsl.load("hope"))                 # plain data: bands, nodes, edges
    level_graph(nestdsl.load("hope")).render("hope", format="svg")
    level_graph(nestdsl.load("hope"), expand="layer")        # the block drawn op by op

`describe` (describe.py, expand.py) says what the level graph shows; `render` draws it. Neither
the renderer nor the timeline imports its drawing library until it is used, so
`import nestdsl.viz` is cheap.
"""

from nestdsl.viz.describe import describe
from nestdsl.viz.picture import Picture
from nestdsl.viz.render import EDGE_STYLES, draw, level_graph
from nestdsl.viz.timeline import default_window, timeline_figure

__all__ = [
    "EDGE_STYLES",
    "Picture",
    "default_window",
    "describe",
    "draw",
    "level_graph",
    "timeline_figure",
]
