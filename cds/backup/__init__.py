"""Backup and restore of a whole CDS instance, as one archive.

The archive is a tar.gz holding a manifest, one JSON-lines file per table (a
portable logical export, so an SQLite backup restores onto PostgreSQL and back),
the encryption and session keys, and instance/config.py when there is one.
With a passphrase the tar.gz is sealed in an AES-256-GCM container whose key
is derived from the passphrase with scrypt.

The copy is consistent while the console keeps running: on SQLite it is read
from a snapshot taken with SQLite's online backup API; on PostgreSQL every
table is read inside one REPEATABLE READ, read-only transaction.

A restore checks everything before it changes anything (format, checksums,
schema revision, keys), builds the new database aside at the archive's schema
revision, loads the rows, migrates to this code's revision, and only then
swaps it in: a new SQLite file put in place with os.replace, or, on
PostgreSQL, one transaction that drops and rebuilds every table (PostgreSQL
DDL is transactional, so a failure leaves the previous database untouched).

The modules, one concern each: ``format`` (members, limits, errors, private files),
``tables`` (the database as JSON lines, both ways), ``container`` (the passphrase
container), ``create`` (writing a backup), ``archive`` (reading and checking one) and
``restore`` (putting one in place).
"""
