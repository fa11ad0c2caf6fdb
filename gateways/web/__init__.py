"""The web app people sign in to: sessions, CSRF, and the server-rendered pages.

`app` mounts it on the FastAPI app; `session`, `signing`, `passwords` and `rate_limit`
are sign-in and its protections; `routes` and `board` serve the pages from `templates/`
with the vendored htmx and SortableJS in `static/`. May import the composition root,
`gateways.postgres`, `gateways.consumers`, `domain`, `handlers` and `projections`.
"""
