"""Data in: user uploads and tables (`inputs`), the procedural scenes, training sources, the bundled samples."""
