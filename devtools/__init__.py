"""Developer tools: the embedded PostgreSQL and the local server. Never deployed (see .gcloudignore)."""
