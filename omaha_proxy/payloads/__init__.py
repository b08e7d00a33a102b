"""Update payloads: verify against an offer, fetch, the shared cache on disk, offline bundles."""
