"""Data-parallel two-tower training: PyTorch DistributedDataParallel under torchrun.

A params file with ``train.processes: N`` (N > 1) trains its two-tower in N processes. The
training step (``steps.train``, as the notebooks and ``make report`` call it) starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m lib.movielens.distributed JOB.json

waits for it, and caches the model rank 0 saved like any other (the run's model key
includes ``train.processes``: a model trained in N processes is not the one-process model).
Backend: gloo on CPU, nccl on GPUs (process r on GPU r). In each process (``Trainer(...,
world=(rank, N))``):

- every process draws the same global batch (same seed, same order) and trains on its
  rows ``rank * B/N ... (rank + 1) * B/N``; its sampled negatives are its rows of the global
  batch's draw (the same draws as a one-process run);
- the in-batch negatives are the positives of the *global* batch: each process embeds the
  whole catalog at every step anyway (``InteractionLoss``), so gathering the global batch's
  item IDs gives exactly the logits that gathering their embeddings would, with no
  embedding traffic and a gradient that needs no cross-process autograd;
- DistributedDataParallel averages the gradients, so a step is the one-process step on the
  global batch up to float summation order and dropout masks;
- validation (loss, NDCG@10) and early stopping run in every process on the whole
  validation split, identically, so every process stops at the same epoch.

When to use it: a catalog and a log whose epoch is too slow for one process or one GPU
(several GPUs on one machine; or several machines, starting this module with torchrun's
multi-node options). On this project's MovieLens runs one process is faster: two processes
on a 2-core CPU each get one core and pay a gradient all-reduce per step.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..core.device import pick_device, set_threads
from . import evaluate as evaluation
from .data import prepared_data
from .train import Trainer


def launch(cfg: dict, data_dir: Path, model_path: Path) -> dict:
    """Train ``cfg``'s two-tower in ``cfg['train']['processes']`` processes (torchrun);
    rank 0 writes the state dict to ``model_path``. The processes' output is printed as it
    comes. Returns the training result (history, epochs, steps, parameters, positives).
    Raises ``RuntimeError`` with the last lines of that output when they fail."""
    with tempfile.TemporaryDirectory(prefix="twotower-ddp-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"cfg": cfg, "data_dir": str(data_dir), "model_path": str(model_path),
                                   "result_path": str(result)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={cfg['train']['processes']}", "-m", "lib.movielens.distributed", str(job)]
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS=str(cfg["train"]["threads"]))  # per process (torchrun would warn and set 1)
        last = collections.deque(maxlen=15)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              bufsize=1) as proc:
            for line in proc.stdout:  # as the processes print it (rank 0's epoch lines), not at the end
                print(line, end="", flush=True)
                if line.strip():
                    last.append(line.rstrip())
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join(last)
            raise RuntimeError(f"data-parallel training ({cfg['train']['processes']} processes) failed with "
                               f"status {proc.returncode}:\n{tail}")
        return json.loads(result.read_text())


def main(argv=None) -> int:
    import torch.distributed as dist
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    cfg = job["cfg"]
    device = pick_device(cfg["device"])
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        rank, size = dist.get_rank(), dist.get_world_size()
        set_threads(cfg["train"]["threads"])
        data = prepared_data(cfg["data"], cfg["seed"], Path(job["data_dir"]))
        trainer = Trainer(data, cfg["model"], cfg["loss"], cfg["train"], cfg["seed"], cfg["device"],
                          world=(rank, size))
        result = trainer.fit(on_epoch=lambda model: evaluation.validation_figures(model, data, cfg, trainer.device),
                             progress=False)
        if rank == 0:
            tmp = Path(job["model_path"])
            torch.save(trainer.model.state_dict(), tmp)
            Path(job["result_path"]).write_text(json.dumps({
                "history": result.history, "best_epoch": result.best_epoch, "stopped_epoch": result.stopped_epoch,
                "steps": result.steps, "parameters": trainer.model.n_parameters(),
                "train_positives": int(len(trainer.train_users)), "processes": size,
                "device": str(trainer.device)}))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
