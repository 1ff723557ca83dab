"""Build minivllm._C: the C binding and CPU kernels with the C compiler, the CUDA kernels with nvcc.

Environment variables:
  MINIVLLM_CPU_ONLY=1      build without CUDA even where nvcc exists
  CUDA_HOME                CUDA toolkit to use (else `nvcc` on PATH, else /usr/local/cuda)
  MINIVLLM_CUDA_ARCHS      gencode list, default "80;90" (cubins for each, plus PTX of the last)
  MINIVLLM_EXTRA_CFLAGS    extra C compiler flags (e.g. "-Werror" or sanitizer flags)
  MINIVLLM_EXTRA_NVCCFLAGS extra nvcc flags (e.g. "-lineinfo" for profiling)
  MINIVLLM_EXTRA_LDFLAGS   extra linker flags
"""

import os
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

C_SOURCES = [
    "csrc/binding/module.c",
    "csrc/binding/call.c",
    "csrc/binding/checks.c",
    "csrc/binding/rms_norm.c",
    "csrc/binding/fused_rms_norm_qkv.c",
    "csrc/binding/attention_prologue.c",
    "csrc/binding/tensor_import.c",
    "csrc/binding/buffer.c",
    "csrc/cpu/pool.c",
    "csrc/cpu/dispatch.c",
    # the kernels once per instruction-set level; the x86-64 levels set their targets by pragma
    # (so one build runs on any x86-64, dispatch.c choosing at run time) and compile to nothing
    # elsewhere
    "csrc/cpu/kernels_portable.c",
    "csrc/cpu/kernels_avx2.c",
    "csrc/cpu/kernels_avx512.c",
    "csrc/cpu/kernels_avx512bf16.c",
]
QKV = "csrc/cuda/fused_rms_norm_qkv/"
CUDA_SOURCES = [
    "csrc/cuda/device.cu",
    "csrc/cuda/rms_norm.cu",
    "csrc/cuda/norm_jit.cu",
    QKV + "dispatch.cu",
    QKV + "register_stream.cu",
    QKV + "bulk_stream.cu",
    QKV + "deferred_stream.cu",
    QKV + "wgmma.cu",
    QKV + "engine.cu",
    QKV + "norm_cublaslt.cu",
    QKV + "tile_gemm.cu",
    QKV + "generic.cu",
    "csrc/cuda/attention_prologue.cu",
]
# Files with Hopper-only instructions (wgmma): where the arch list has 90 they are built for
# sm_90a alone (that code runs on 9.0 devices only; its plan checks) with MINIVLLM_HAVE_SM90A
# defined, else for the list as given, with their kernels compiled empty.
SM90A_SOURCES = {QKV + "wgmma.cu", QKV + "engine.cu"}


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """CUDA_HOME, then the toolkit of `nvcc` on PATH, then /usr/local/cuda; None if no nvcc."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def cuda_library_dir(home):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        path = os.path.join(home, sub)
        if os.path.isfile(os.path.join(path, "libcudart_static.a")):
            return path
    raise RuntimeError(f"libcudart_static.a not found under {home}; set CUDA_HOME or MINIVLLM_CPU_ONLY=1")


def compiler_accepts(compiler, flag):
    """Whether the C compiler takes `flag` (compiling and linking a tiny program)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=[flag])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        ext = self.extensions[0]
        cflags = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fvisibility=hidden"]
        ldflags = []
        # The CPU kernels run on their own pthread pool (csrc/cpu/pool.h), not OpenMP.
        if compiler_accepts(self.compiler, "-pthread"):
            cflags.append("-pthread")
            ldflags.append("-pthread")
        cflags += shlex.split(os.environ.get("MINIVLLM_EXTRA_CFLAGS", ""))
        ldflags += shlex.split(os.environ.get("MINIVLLM_EXTRA_LDFLAGS", ""))

        cuda_home = None if env_flag("MINIVLLM_CPU_ONLY") else find_cuda_home()
        if cuda_home:
            print(f"minivllm: building CUDA kernels with {cuda_home}/bin/nvcc", flush=True)
            ext.define_macros.append(("MINIVLLM_WITH_CUDA", "1"))
            ext.include_dirs.append(os.path.join(cuda_home, "include"))
            ext.extra_objects += self.compile_cuda(cuda_home)
            # Static cudart: the module loads wherever a driver is, with no toolkit needed.
            libdir = cuda_library_dir(cuda_home)
            ldflags += [os.path.join(libdir, "libcudart_static.a"), "-lstdc++", "-lrt", "-lpthread", "-ldl"]
        else:
            print("minivllm: building the CPU-only module (no nvcc found or MINIVLLM_CPU_ONLY=1)",
                  flush=True)
        ext.extra_compile_args += cflags
        ext.extra_link_args += ldflags
        super().build_extensions()

    def compile_cuda(self, cuda_home):
        nvcc = os.path.join(cuda_home, "bin", "nvcc")
        archs = [a.strip() for a in os.environ.get("MINIVLLM_CUDA_ARCHS", "80;90").split(";") if a.strip()]
        gencode = []
        for arch in archs:
            gencode.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        # where the CUDA libraries opened at run time (cuBLASLt, NVRTC) are looked for after their
        # soname: this toolkit's library folder (csrc/cuda/device.cu, mv_open_cuda_library)
        lib_dir = f'-DMINIVLLM_CUDA_LIB_DIR="{cuda_library_dir(cuda_home)}/"'
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cuda"))
        os.makedirs(build_dir, exist_ok=True)

        def compile_one(src):
            obj = os.path.join(build_dir, src.replace("/", "_") + ".o")
            codes = gencode
            if src in SM90A_SOURCES and "90" in archs:
                codes = ["-gencode=arch=compute_90a,code=sm_90a", "-DMINIVLLM_HAVE_SM90A"]
            cmd = [nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden",
                   "--expt-relaxed-constexpr", "-Icsrc", lib_dir, *codes,
                   *shlex.split(os.environ.get("MINIVLLM_EXTRA_NVCCFLAGS", "")), "-c", src, "-o", obj]
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd, cwd=HERE)
            return obj

        workers = max(1, min(len(CUDA_SOURCES), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(compile_one, CUDA_SOURCES))


setup(
    ext_modules=[
        Extension(
            "minivllm._C",
            sources=C_SOURCES,
            include_dirs=["csrc"],
            depends=[os.path.relpath(os.path.join(d, f), HERE)
                     for d, _, files in os.walk(os.path.join(HERE, "csrc"))
                     for f in files if f.endswith((".h", ".cuh", ".cu"))],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
