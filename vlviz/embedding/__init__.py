"""The embedding space: the modality gap and 2-D layouts (`space`), UMAP in a child process (`umap_layout`,
`layout_worker`), sharded embeddings of large sets on disk (`store`), and such a folder opened for exploring
(`dataset`: its `folder`, `pair_columns`, `search_index` and `layout_store`)."""
