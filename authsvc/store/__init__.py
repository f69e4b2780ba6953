"""Storage: the Redis client, key names, Lua scripts and the revocation feed."""
