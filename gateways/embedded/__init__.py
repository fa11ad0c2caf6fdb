"""The embedded servers: a real PostgreSQL and a real NATS (JetStream) under one data folder.

Started by `leadlog up` and the tests when no server URLs are configured. Imports only
the standard library and the packages that ship the servers.
"""
