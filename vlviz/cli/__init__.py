"""The command line (`main`: `python -m vlviz report|embed|train|eval-grounding|...`) and the static report
(`report`)."""
