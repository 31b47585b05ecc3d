"""Tests of the Gradio app (vlviz/ui/): its API through gradio_client and its pages in Chromium."""
