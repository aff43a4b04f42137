"""Dashboard pages, Dash pages convention: each module has a ``layout(**query)`` and a
``register(app)`` that calls ``dash.register_page`` and attaches its small callbacks
(``server.create_app`` calls it for every page). Component ids are prefixed by the page.
"""
from . import circuits, detail, export, flow, grid, patching, runs

PAGES = (runs, grid, detail, flow, patching, circuits, export)
