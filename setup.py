"""The native kernel library (csrc/), built by `pip install` like any extension.

Everything else about the package is in pyproject.toml; this file exists only because an
extension module needs setup(ext_modules=...).  One compile covers every x86 instruction
set (each kern_<isa>.c sets its own target options; the library picks one at run time),
so no -march: the wheel runs on any x86-64 CPU.  The extension is optional: where it does
not build, vocabtrim installs without it and vocabtrim.native says so in one line."""

from pathlib import Path

from setuptools import Extension, setup

SOURCES = ["module.c", "pool.c", "matmul.c", "model.c", "kern_portable.c", "kern_avx2.c", "kern_avxvnni.c",
           "kern_avx512vnni.c"]
CSRC = Path("csrc")

setup(ext_modules=[Extension(
    "vocabtrim._native",
    sources=[str(CSRC / s) for s in SOURCES],
    depends=[str(p) for p in sorted(CSRC.glob("*.h"))],
    # -ffp-contract=off: no fused multiply-adds, so every path rounds the same steps
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-ffp-contract=off", "-fvisibility=hidden",
                        "-D_GNU_SOURCE", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["m"],
    optional=True,
)])
