"""One module per tab of the app; each builds its components, fills them for an analysis, wires its own events
and declares its named endpoints. A new tab is a new module here plus one line in :mod:`attnviz.ui.app`."""
