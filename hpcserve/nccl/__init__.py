"""How NCCL traffic flows, read from NCCL_DEBUG=INFO logs."""
