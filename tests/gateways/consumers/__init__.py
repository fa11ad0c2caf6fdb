"""Tests of `gateways.consumers`."""
