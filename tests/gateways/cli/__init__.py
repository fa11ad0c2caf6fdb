"""Tests of `gateways.cli`."""
