"""Data -> figures, tables and HTML: the views of every tab, their exports and the model comparison.

Never loads or runs a model, never imports gradio: the app's tabs, the report and notebooks draw
with it.
"""
