"""The offline batch job, `nanoinspect score`: job.py (what a run is asked), driver.py
(inputs, resumable store, merge), engine_local.py and engine_ray.py (where rows are
computed), rows.py, inputs.py, store.py. Torch-free; shares only models/ with the server."""
