"""TEMPORARY: the CSV/zip bulk import moves here from ``catalog.services``; until it does, re-exported."""

from catalog.services import (  # noqa: F401
    IMPORT_MAX_CSV_BYTES,
    IMPORT_MAX_ROWS,
    IMPORT_MAX_ZIP_BYTES,
    IMPORT_OPTIONAL_COLUMNS,
    IMPORT_REQUIRED_COLUMNS,
    CsvImportResult,
    ImportFileError,
    Rejection,
    import_job_create,
    import_job_run,
    product_import_csv,
)
