"""Errors the store raises; each message names the object or path at fault."""


class StoreError(Exception):
    """Base class for store errors."""


class ObjectNotFound(StoreError):
    """A blob, commit, run or sweep that the store does not hold."""


class ObjectCorrupted(StoreError):
    """A blob whose bytes no longer hash to its id."""


class UnsafePath(StoreError):
    """A path that would leave its root: a tree entry outside the restore target, a file to
    commit outside the committed directory."""


class StoreFull(StoreError):
    """A write the store's database has no room for: the disk (or the database's page limit,
    or the server's disk) is full. The message names the database."""


class StoreMalformed(StoreError):
    """The store's database file is damaged (SQLite: "database disk image is malformed",
    "file is not a database"). The message names the file and what to do."""
