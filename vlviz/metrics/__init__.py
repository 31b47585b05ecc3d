"""Metrics on embeddings: affinity matrices, match probabilities and ranks (`affinity`), SaCo's sample-wise
inconsistency (`consistency`). Pure tensor functions: they import nothing else of vlviz."""
