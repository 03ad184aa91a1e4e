"""Views (plotly, graphviz) over shear_graph objects. The core never imports this package."""
