"""A local Ray for the Ray tests: 2 CPUs on 127.0.0.1, the tests folder importable by its workers (they unpickle
the tests' editor factories and helpers), shut down afterwards (Ray Serve too, if asked); SIGALRM bounds the
whole module's time."""
import contextlib
import os
import signal

TESTS = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def local_ray(limit_s, what, serve=False):
    import ray

    def too_slow(*_):
        raise TimeoutError(f"{what} took over {limit_s} s")
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(limit_s)
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": TESTS}})
    try:
        yield ray
    finally:
        if serve:
            from ray import serve as ray_serve
            ray_serve.shutdown()
        ray.shutdown()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
