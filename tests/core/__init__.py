"""Tests of the core library (vlviz/, vlviz/losses/, vlviz/data/)."""
