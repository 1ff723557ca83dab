"""Compare the SASS of every kernel in two builds (directories of object files).

Kernels are matched by their mangled name with the anonymous namespace's per-file tag removed, per
architecture; instruction text is compared with addresses and encodings stripped. Prints one line
per kernel (same / DIFFERENT / only in one build) and exits 1 if any kept kernel differs.
Needs cuobjdump and nvdisasm on PATH (the nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels).

  python3 dev/sass_compare.py BEFORE_DIR AFTER_DIR
"""
import glob
import os
import re
import subprocess
import sys

ANON = re.compile(r"_GLOBAL__N__[0-9a-f]+_\d+_\w+?_cu_[0-9a-f]{8}")
ADDR = re.compile(r"/\*[0-9a-f]{4,}\*/")
ENC = re.compile(r"/\* 0x[0-9a-f]{16} \*/")


def kernels(directory):
    out = {}
    for obj in sorted(glob.glob(os.path.join(directory, "*.o"))):
        text = subprocess.run(["cuobjdump", "-sass", obj], capture_output=True, text=True,
                              check=True).stdout
        arch = None
        name = None
        body = []
        for line in text.splitlines():
            m = re.match(r"\s*arch = (sm_\w+)", line)
            if m or line.startswith("Fatbin") or line.startswith("====="):
                if name:
                    out[(arch_of_name, name)] = body
                name = None
                if m:
                    arch = m.group(1)
                continue
            m = re.match(r"\s*Function : (\S+)", line)
            if m:
                if name:
                    out[(arch_of_name, name)] = body
                name = re.sub(r"_ZN\d+" + ANON.pattern, "_ZN_ANON", m.group(1))
                name = ANON.sub("ANON", name)
                arch_of_name = arch
                body = []
                continue
            if name is not None:
                line = ENC.sub("", ADDR.sub("", line)).strip()
                if line and not line.startswith(".") and not line.startswith("..........") \
                        and "Fatbin" not in line:
                    body.append(re.sub(r"\s+", " ", line))
        if name:
            out[(arch_of_name, name)] = body
    return out


def main():
    before, after = kernels(sys.argv[1]), kernels(sys.argv[2])
    differ = 0
    for key in sorted(set(before) | set(after)):
        arch, name = key
        if key not in after:
            print(f"removed   {arch} {name}")
        elif key not in before:
            print(f"new       {arch} {name}")
        elif before[key] == after[key]:
            print(f"same      {arch} {name} ({len(after[key])} instructions)")
        else:
            differ += 1
            print(f"DIFFERENT {arch} {name}")
    kept = len(set(before) & set(after))
    print(f"{kept} kernels in both builds, {kept - differ} identical, {differ} different; "
          f"{len(set(before) - set(after))} removed, {len(set(after) - set(before))} new")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
