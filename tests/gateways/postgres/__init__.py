"""Tests of `gateways.postgres`."""
