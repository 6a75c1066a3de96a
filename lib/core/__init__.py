"""The core that knows no study: params (load, validate, merge, hash), files (atomic
writes, complete-or-absent folders, locks), device and threads, runs (cache keys and
artifact folders), the study registry, notebooks and the runner (papermill), FAISS
retrieval with brute-force references, metrics, statistics and report rendering."""
