"""The HTTP edge: the FastAPI app, its routers (one module per resource) and ingest.

`app` builds the application from the routers, with `fast_path` in front for the ingest
route; `auth`, `errors`, `middleware`,
`payloads` and `views` are what every router shares. May import the composition root,
`gateways.postgres`, `gateways.consumers`, `domain`, `handlers` and `projections`.
"""
