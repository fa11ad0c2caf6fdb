"""Tests of `gateways.embedded`."""
