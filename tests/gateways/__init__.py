"""Tests of `gateways`."""
