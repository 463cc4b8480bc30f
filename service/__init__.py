"""Online side: the FastAPI app, the batch scoring job and the command line. Torch-free."""
