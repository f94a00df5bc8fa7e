"""Build information and the thread pool."""

import re
import subprocess
import sys

import numpy as np
import pytest

import primaps


def test_build_info_reports_real_libraries():
    info = primaps.build_info()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["openblas"]), info
    assert re.fullmatch(r"3\.\d+\.\d+", info["onednn"]), info  # the v3 API
    assert info["numpy"] == np.__version__
    assert info["onednn_runtime"] == "OpenMP"
    assert info["onednn_isa"] not in ("unknown", "")
    assert info["openblas_corename"]
    assert info["threads"] == primaps.get_num_threads()
    assert info["openblas_threads"] == 1


def test_build_info_outside_source_tree(tmp_path):
    """The installed extension finds its libraries without LD_LIBRARY_PATH."""
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", "import primaps, json; print(json.dumps(primaps.build_info()))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert '"onednn": "3.' in out.stdout


def test_set_get_num_threads(threads):
    for n in (1, 3, 2):
        threads(n)
        assert primaps.get_num_threads() == n
        assert primaps.build_info()["threads"] == n
        assert primaps.build_info()["openblas_threads"] == 1


@pytest.mark.parametrize("bad", [0, -1, 10**6])
def test_set_num_threads_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="n must"):
        primaps.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", None, True])
def test_set_num_threads_rejects_non_integers(bad):
    with pytest.raises(TypeError, match="n must be a positive integer"):
        primaps.set_num_threads(bad)


def test_threadpoolctl_sees_our_libraries():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    libs = threadpoolctl.threadpool_info()
    apis = {lib["internal_api"] for lib in libs}
    assert "openmp" in apis
    paths = " ".join(lib["filepath"] for lib in libs)
    assert "libscipy_openblas" in paths
