"""Benchmark harness: ``run_benchmark(BenchConfig(...))`` / ``diffem bench``, ``merge`` / ``diffem bench-merge``.

Methods come from a registry (``register_method(name, fn)``, see ``diffem.benchmark.methods``).
"""
from diffem.benchmark.methods import available_methods, get_method, register_method, unregister_method
from diffem.benchmark.runner import BenchConfig, run_benchmark, shard_from_env, shard_jobs
from diffem.benchmark.specs import MethodSpec, parse_methods, parse_sigmas
from diffem.benchmark.summary import load_rows, merge, summarise, write_summary

__all__ = ["BenchConfig", "run_benchmark", "shard_from_env", "shard_jobs", "register_method", "unregister_method",
           "get_method", "available_methods", "MethodSpec", "parse_methods", "parse_sigmas", "load_rows", "merge",
           "summarise", "write_summary"]
