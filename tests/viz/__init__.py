"""Tests of the views (vlviz/viz/): data in, figures, tables and files out."""
