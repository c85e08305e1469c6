"""im2col works on tiles of the batch: its workspace stays bounded however big the batch."""
import json
import subprocess
import sys

SCRIPT = r"""
import json, resource, numpy as np, fastconv
def peak():  # peak resident set size of this process, bytes (ru_maxrss is in KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
x = np.ones((64, 256, 56, 56), np.float32)
w = np.full((256, 256, 3, 3), 1e-3, np.float32)
fastconv.conv2d(x[:1, :, :8, :8], w, padding=1, algorithm="im2col")   # compile, load BLAS
before = peak()
y = fastconv.conv2d(x, w, padding=1, algorithm="im2col")
after = peak()
print(json.dumps(dict(before=before, after=after, output=y.nbytes, input=x.nbytes,
                      center=float(y[3, 7, 20, 20]))))
"""


def test_im2col_workspace_is_bounded():
    # an untiled im2col of this layer would need 256*9 x 64*56*56 floats = 1.85 GB
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.strip().splitlines()[-1])
    extra = r["after"] - r["before"] - r["output"]
    assert extra < 300 * 2**20, f"peak memory rose {extra / 2**20:.0f} MiB beyond the output"
    assert abs(r["center"] - 256 * 9 * 1e-3) < 1e-3  # and the answer is right
