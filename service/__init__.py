"""Online side: the FastAPI app and the batch scoring job. Torch-free."""
