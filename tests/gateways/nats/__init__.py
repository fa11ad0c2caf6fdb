"""Tests of `gateways.nats`."""
