"""The schema: ONE numbered series for both backends.

Each number is a pair of files side by side, `NNNN_name.sqlite.sql` and
`NNNN_name.postgresql.sql`; where one backend has nothing to do, its file is a comment saying
why. A schema change is a NEW number with both files, never an edit of an old file.
`uploader.store.migrations` reads the series and each engine applies it: SQLite every number
above `PRAGMA user_version`, PostgreSQL every number missing from its `uploader_migrations`
table.

The numbers are SQLite's from before the series were joined (a SQLite database needed no
change); PostgreSQL's own old numbers were mapped once onto them (LEGACY_POSTGRESQL in
`uploader.store.migrations`), when a database of that time is first opened.
"""
