"""Several gateway replicas behind one load balancer (OLLABRIDGE_REDIS_URL, OLLABRIDGE_REPLICA_URL).

- `presence.py`: each replica publishes the GPU nodes its relay hub holds into Redis (a key per
  replica, a few seconds' expiry, refreshed every second and on change) and joins the other
  replicas' nodes to its router as `RemoteNodeBackend`s.
- `remote.py`: `RemoteNodeBackend`, a node connected to another replica: its requests go to that
  replica's internal endpoint over the project's HTTP/1.1 pool; the data path never crosses Redis.
- `auth.py`: the credential replicas present to each other (an HMAC of the shared admin token).

The internal endpoint itself is `ollabridge/api/internal_routes.py`.
"""
