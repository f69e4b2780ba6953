"""The domain: accounts and passwords, tokens, sessions, throttling. No HTTP here."""
