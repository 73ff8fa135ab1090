"""NCCL probe for the GPU machine: all_reduce + ring send/recv, one process per GPU.

Run under torchrun (one process per GPU) with NCCL_DEBUG=INFO to produce real NCCL logs:
    torchrun --standalone --nproc-per-node N tests/gpu/nccl_probe.py [--mib 64] [--iters 5]
Prints, on rank 0, the torch/NCCL versions, a correctness check and a rough bus bandwidth
per operation (the bandwidth is informative only; the logs are what this is for).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist


def _timed(fn, iters: int) -> float:
    """Run fn iters times after one warm-up; return seconds per iteration."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64, help="message size in MiB")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()

    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        print(
            f"probe: torch {torch.__version__} nccl {torch.cuda.nccl.version()} world {world}",
            flush=True,
        )

    numel = args.mib * 1024 * 1024 // 4
    buf = torch.full((numel,), float(rank + 1), device=device)

    # all_reduce: correctness, then timing
    dist.all_reduce(buf)
    expected = world * (world + 1) / 2
    ok_ar = bool(torch.all(buf == expected).item())
    t_ar = _timed(lambda: dist.all_reduce(buf), args.iters)

    # ring send/recv: rank r sends to r+1 and receives from r-1 (batched, no deadlock)
    send = torch.full((numel,), float(rank), device=device)
    recv = torch.empty_like(send)
    nxt, prv = (rank + 1) % world, (rank - 1) % world

    def ring() -> None:
        ops = [dist.P2POp(dist.isend, send, nxt), dist.P2POp(dist.irecv, recv, prv)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()

    ring()
    torch.cuda.synchronize()
    ok_p2p = bool(torch.all(recv == float(prv)).item())
    t_p2p = _timed(ring, args.iters)

    nbytes = numel * 4
    ar_busbw = nbytes * 2 * (world - 1) / world / t_ar / 1e9
    p2p_bw = nbytes / t_p2p / 1e9
    results = torch.tensor([ok_ar and ok_p2p], device=device, dtype=torch.int32)
    dist.all_reduce(results, op=dist.ReduceOp.MIN)
    if rank == 0:
        print(
            f"probe: all_reduce {args.mib} MiB x{args.iters}: {t_ar * 1e3:.2f} ms, "
            f"busbw {ar_busbw:.1f} GB/s; ring send/recv: {t_p2p * 1e3:.2f} ms, "
            f"{p2p_bw:.1f} GB/s per link; correct on all ranks: {bool(results.item())}",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
