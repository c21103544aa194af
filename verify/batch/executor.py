"""Run the per-example pipeline over many examples: in-process, or on Dask workers.

The driver owns the results store: workers certify small chunks of examples and
return rows; the driver writes each row as its chunk comes back. A worker that
dies takes only its running chunk with it, and Dask re-runs that chunk on
another worker (``retries``). A driver that dies loses only unfinished chunks;
re-running the same command skips everything already in the store.

Workers are single-threaded (one Dask thread, one torch thread, one HiGHS
thread), so N workers use N cores without oversubscription.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import SolverUnavailableError, VerifyError
from ..network import Network

if TYPE_CHECKING:
    from dask.distributed import Client
    from dask_jobqueue.slurm import SLURMCluster
    from distributed.deploy.spec import SpecCluster

RowSink = Callable[[dict[str, Any], "np.ndarray | None"], None]


@dataclass(frozen=True)
class ClusterOptions:
    """Where to run: ``workers`` local processes, an existing ``scheduler``, or SLURM ``jobs``."""

    workers: int = 0
    scheduler: str | None = None
    cluster: str | None = None  # "slurm"
    jobs: int = 1
    queue: str | None = None
    memory: str = "4GB"
    walltime: str = "01:00:00"
    cores: int = 1
    account: str | None = None
    job_extra: tuple[str, ...] = ()
    chunk: int = 0  # examples per task; 0: about four tasks per worker, 2 to 32 examples each

    def chunk_size(self, n: int) -> int:
        """Large enough to keep the batched bound stages efficient, small enough to balance and to lose
        little when a worker dies."""
        if self.chunk > 0:
            return self.chunk
        slots = self.workers or (self.jobs * self.cores) or 4
        return max(2, min(32, -(-n // (4 * slots))))

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.scheduler is not None or self.cluster is not None


def result_to_row(result: Any) -> tuple[dict[str, Any], np.ndarray | None]:
    """A Verdict as a JSON-able row plus its counterexample (kept out of the row)."""
    ce = result.counterexample
    return result.row(), (None if ce is None else np.asarray(ce.detach().cpu().to(torch.float64)))


def certify_chunk(net: Network, x: np.ndarray, y: np.ndarray, indices: Sequence[int], config: Any) -> list[tuple[dict[str, Any], np.ndarray | None]]:
    """The unit of work on a worker: certify a few examples, return their rows."""
    from ..certify import certify
    from ..spec import LpBall

    torch.set_num_threads(1)
    pset = LpBall.make(torch.as_tensor(x), config.eps, config.p, net.input_range)
    results = certify(net, pset, torch.as_tensor(y), list(indices), config, progress=False)
    return [result_to_row(r) for r in results]


def run_examples(
    net: Network,
    x: Tensor,
    y: Tensor,
    indices: Sequence[int],
    config: Any,
    sink: RowSink,
    *,
    options: ClusterOptions = ClusterOptions(),
    progress: bool = True,
) -> None:
    """Certify ``indices`` (rows of x, y in the same order) and hand each row to ``sink`` as it finishes."""
    if len(indices) == 0:
        return
    if not options.distributed:
        _run_inline(net, x, y, indices, config, sink, progress)
    else:
        _run_dask(net, x, y, indices, config, sink, options, progress)


def _run_inline(net: Network, x: Tensor, y: Tensor, indices: Sequence[int], config: Any, sink: RowSink,
                progress: bool) -> None:
    from ..certify import certify
    from ..spec import LpBall

    pset = LpBall.make(x, config.eps, config.p, net.input_range)

    def on_result(r: Any) -> None:
        sink(*result_to_row(r))

    certify(net, pset, y, list(indices), config, progress=progress, on_result=on_result)


def _worker_setup() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def make_client(options: ClusterOptions) -> Client:
    """A dask.distributed Client for the options (LocalCluster, an address, or SLURMCluster)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SolverUnavailableError(
            "Dask is not installed: pip install 'relu-verify[cluster]' (dask[distributed], dask-jobqueue)"
        ) from None
    if options.scheduler is not None:
        try:
            return Client(options.scheduler, timeout="20s")  # type: ignore[no-untyped-call]  # dask: untyped
        except (OSError, TimeoutError) as e:
            raise VerifyError(f"cannot reach the Dask scheduler at {options.scheduler}: {e}") from None
    cluster: SpecCluster
    if options.cluster == "slurm":
        cluster = make_slurm_cluster(options)
        cluster.scale(jobs=options.jobs)  # type: ignore[no-untyped-call]
        return Client(cluster)  # type: ignore[no-untyped-call]
    if options.cluster is not None:
        raise VerifyError(f"unknown --cluster {options.cluster!r}: use slurm (or --scheduler ADDRESS)")
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=options.workers, threads_per_worker=1, processes=True, dashboard_address=None,
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    return Client(cluster)  # type: ignore[no-untyped-call]


def make_slurm_cluster(options: ClusterOptions) -> SLURMCluster:
    try:
        from dask_jobqueue import SLURMCluster  # type: ignore[attr-defined]  # re-exported without __all__
    except ImportError:
        raise SolverUnavailableError("dask-jobqueue is not installed: pip install 'relu-verify[cluster]'") from None
    return SLURMCluster(
        cores=options.cores,
        processes=options.cores,
        memory=options.memory,
        queue=options.queue,
        account=options.account,
        walltime=options.walltime,
        job_extra_directives=list(options.job_extra),
        worker_extra_args=["--nthreads", "1"],
        job_script_prologue=["export OMP_NUM_THREADS=1"],
    )


def _run_dask(net: Network, x: Tensor, y: Tensor, indices: Sequence[int], config: Any, sink: RowSink,
              options: ClusterOptions, progress: bool) -> None:
    from dask.distributed import as_completed
    from tqdm import tqdm

    client = make_client(options)
    try:
        client.run(_worker_setup)
        net_f = client.scatter(net, broadcast=True)  # type: ignore[no-untyped-call]
        xs = np.asarray(x.detach().cpu())
        ys = np.asarray(y.detach().cpu())
        futures = []
        chunk = options.chunk_size(len(indices))
        for start in range(0, len(indices), chunk):
            sl = slice(start, start + chunk)
            futures.append(
                client.submit(certify_chunk, net_f, xs[sl], ys[sl], list(indices[sl]), config, retries=3, pure=False)
            )
        counts: dict[str, int] = {}
        bar = tqdm(total=len(indices), disable=not progress, unit="ex", desc="certify", dynamic_ncols=True)
        try:
            for fut in as_completed(futures):  # type: ignore[no-untyped-call]  # dask: untyped
                for row, ce in fut.result():
                    sink(row, ce)
                    counts[row["status"]] = counts.get(row["status"], 0) + 1
                    bar.update(1)
                bar.set_postfix(counts, refresh=False)
        finally:
            bar.close()
    finally:
        client.close()  # type: ignore[no-untyped-call]
        cluster = getattr(client, "cluster", None)
        if cluster is not None:
            cluster.close()
