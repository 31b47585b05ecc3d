"""Tests of the training harness (vlviz/training/)."""
