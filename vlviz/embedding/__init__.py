"""The embedding space: the modality gap and 2-D layouts (`space`), UMAP in a child process (`umap_layout`,
`layout_worker`), and sharded embeddings of large sets on disk (`store`)."""
