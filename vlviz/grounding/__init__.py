"""Grounding: where each caption word lands on its image. SPARC's alignment weights (`sparc`), occlusion maps
(`occlusion`), and the maps every view reads, their scores on scenes and the untrained twin (`maps`, which
also reads SIMLA's trained XMM head, so it sits above `vlviz.losses`)."""
