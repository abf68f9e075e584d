"""Storage paths, local or gs://, and the GCS client the data tools use."""
