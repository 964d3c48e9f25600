"""A job that does nothing: the RQ worker's own cost per job, the outbox bench's baseline."""


def noop(i: int) -> int:
    return i
