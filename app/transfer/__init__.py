"""Moving bytes: HTTP requests and errors, partial files, single-stream and segmented transfers."""
