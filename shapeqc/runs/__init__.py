"""Running many cases: discovery, the per-case analysis, the journal and lock, batch and Dask cohort runs, a cohort's
own calibration."""
