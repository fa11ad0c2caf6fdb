"""Tests of `gateways.http`."""
