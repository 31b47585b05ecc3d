"""Two models side by side: weights interpolated along WiSE-FT's alpha (`interpolation`) and the before/after
lens on the same pairs (`lens`)."""
