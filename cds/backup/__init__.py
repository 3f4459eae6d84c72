"""Backup and restore of the whole instance: database, keys and settings in one archive."""
