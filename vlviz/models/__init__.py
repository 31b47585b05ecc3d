"""Models: which specs load (`specs` in `loading`, `policy`), the towers' parts (`towers`, `tokens`), encoding pairs
once with caches (`encoding`), checkpoints on disk (`checkpoints`), and loading a spec with its trained heads
(`loading`, which sits above `vlviz.losses`: a checkpoint carries its PSL and XMM heads)."""
