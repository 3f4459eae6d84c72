"""The version of CDS: shown by /healthz and the OpenAPI document, and written into backups."""
__version__ = "0.1.0"
