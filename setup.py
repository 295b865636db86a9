"""setuptools hooks of the Python package (the metadata is in pyproject.toml).

build_py runs `make build cli` in this checkout (QEMBED_PREBUILT=1 skips it
and takes what .build/release holds) and copies into the package:
  qembed/libqembed.so            the library the binding loads first
  qembed/libqembed-<tier>.so     its per-CPU-tier builds (x86-64)
  qembed/bin/qembed              the qembed command (the `qembed` entry point runs it)
all stripped. bdist_wheel then tags the wheel for this platform (py3-none-<platform>):
the package holds native code but no Python extension module, so any CPython 3 can
use it.
"""

import glob
import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(ROOT, ".build", "release")


def header_version():
    text = open(os.path.join(ROOT, "include", "qembed.h")).read()
    part = lambda name: re.search(r"#define QEMBED_VERSION_%s (\d+)" % name, text).group(1)
    return "%s.%s.%s" % (part("MAJOR"), part("MINOR"), part("PATCH"))


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        if os.environ.get("QEMBED_PREBUILT") != "1":
            subprocess.check_call(["make", "-C", ROOT, "build", "cli"])
        dest = os.path.join(self.build_lib, "qembed")
        files = [(os.path.join(BUILD, "libqembed.so"), "libqembed.so")]
        files += [(v, os.path.basename(v)) for v in sorted(glob.glob(os.path.join(BUILD, "libqembed-*.so")))]
        files.append((os.path.join(BUILD, "qembed-cli"), os.path.join("bin", "qembed")))
        for src, name in files:
            if not os.path.isfile(src):
                raise SystemExit("qembed: %s is missing (run `make build cli`)" % src)
            target = os.path.join(dest, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(src, target)
            os.chmod(target, 0o755)
            if shutil.which("strip"):
                subprocess.check_call(["strip", "--strip-unneeded", target])


class BinaryDistribution(Distribution):
    """Native files inside: a platform wheel whose root is platlib."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(version=header_version(), distclass=BinaryDistribution,
      cmdclass={"build_py": BuildWithLibrary, "bdist_wheel": PlatformWheel})
