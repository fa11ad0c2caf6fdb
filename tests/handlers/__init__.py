"""Tests of `handlers` that need no servers."""
