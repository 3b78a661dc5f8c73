"""The XLA flags of every test process, subprocesses included (no imports: conftest reads it before jax loads).

XLA's CPU backend without LLVM's optimisation passes: the suite's tiny programs compile in about two thirds of
the time and run no slower. Every process of the suite takes the same flag, so runs compared bit for bit
(a resumed run against an uninterrupted one, two processes against one) compile alike."""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test's subprocess: the fast compile, and `devices` fake CPU devices if given."""
    return FAST_COMPILE + (f" --xla_force_host_platform_device_count={devices}" if devices else "")
