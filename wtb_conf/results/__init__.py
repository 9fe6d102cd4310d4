"""Results floor: comparison tables and the HTML report, read from the store."""
