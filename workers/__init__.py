"""RQ job functions: thin, module-level, take ids and plain values, call one service."""
