"""Tests of `gateways.outbound`."""
