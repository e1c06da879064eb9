"""qdata's load benchmark: throughput, latency and memory as ratios to a reference measured in
the same run (a bare grpc.aio echo), driven by h2load. Run it with `make bench`; see README.md.
"""
