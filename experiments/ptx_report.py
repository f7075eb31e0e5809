"""GPU readiness without a GPU: every cuda kernel, float32 and float64, compiled to PTX and assembled
by ``ptxas -v`` for sm_80 (A100) and sm_90 (H100), with the resources it reports per thread.

Targets: no float64 arithmetic in float32 kernels, no register spills, and forward kernels in at most
64 registers (at 256 threads per block that keeps at least half of an SM's threads resident). Beside
them, each kernel's memory traffic per output element (bytes its threads read and write, counted on
the CUDA simulator in a child process: ``ptx.memory_traffic``), the quantity a GPU roofline judges it
by. Prints progress and the table, and saves it as experiments/results/ptx_report.md.

    python experiments/ptx_report.py [--capabilities 80 90] [--no-save]
"""
import argparse
import importlib.metadata
import json
import os

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # before Numba is imported: the simulator cannot compile

import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numba  # noqa: E402

import numba_droi  # noqa: E402
from numba_droi import ptx  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BLOCK = 256  # threads per block of _backend.launch


def occupancy(registers):
    """Share of an sm_80/sm_90 SM's 2048 threads resident at ``registers`` per thread, when registers
    are the limit: its 65536 registers go to warps in units of 256, to blocks of ``BLOCK`` threads."""
    per_warp = -(-registers * 32 // 256) * 256
    blocks = min(65536 // (per_warp * BLOCK // 32), 2048 // BLOCK)
    return blocks * BLOCK / 2048


def measure(capabilities):
    """``(rows, tools)``: a row per kernel, dtype and capability, and the tools' versions."""
    with tempfile.TemporaryDirectory() as out:
        files = ptx.compile_all(out, capabilities, progress=lambda message: print(message, flush=True))
        texts = {name: open(os.path.join(out, name)).read() for name in files}
        first = texts[files[0]]
        ptxas = ptx.find_ptxas(first)
        if ptxas is None:
            sys.exit(f"no ptxas of CUDA {ptx.cuda_release(first)}, the release of the NVVM that wrote "
                     "the PTX (pip install nvidia-cuda-nvcc-cu12 of that release)")
        rows = []
        for name in files:
            kernel, dtype, arch, _ = name.split(".")
            print(f"ptxas {kernel} {dtype} {arch}", flush=True)
            resources = ptx.ptxas_resources(ptxas, os.path.join(out, name), arch[3:])
            f64 = len(ptx.f64_instructions(texts[name])) if dtype == "float32" else None
            rows.append(dict(kernel=kernel, dtype=dtype, arch=arch, f64=f64, **resources))
            if ptx.is_forward(kernel) and resources["registers"] > ptx.FORWARD_REGISTER_TARGET:
                # what forcing the target with a register cap would cost
                capped = ptx.ptxas_resources(ptxas, os.path.join(out, name), arch[3:],
                                             max_registers=ptx.FORWARD_REGISTER_TARGET)
                rows[-1]["capped_spills"] = capped["spill_stores"] + capped["spill_loads"]
    header = re.search(r"Cuda compilation tools, release [^\n]*", first).group(0)
    tools = {"NVVM (wrote the PTX)": header,
             "PTX ISA": re.search(r"^\.version (\S+)", first, re.M).group(1),
             "ptxas": f"{ptx.ptxas_version(ptxas)} ({ptxas})"}
    return rows, tools


def traffic():
    """``ptx.memory_traffic()`` from a child process on the CUDA simulator (this one compiles)."""
    print("counting memory traffic on the simulator", flush=True)
    child = subprocess.run([sys.executable, "-c", "import json; from numba_droi import ptx; "
                            "print(json.dumps(ptx.memory_traffic()))"],
                           env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), capture_output=True, text=True,
                           check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def targets(rows):
    """``(target, kernels that miss it)`` for each target."""
    def missing(condition):
        return sorted({f"{r['kernel']} {r['dtype']} {r['arch']}" for r in rows if condition(r)})

    limit = ptx.FORWARD_REGISTER_TARGET
    return [("no float64 instructions in float32 kernels", missing(lambda r: r["f64"])),
            ("no register spills, no local memory",
             missing(lambda r: r["spill_stores"] or r["spill_loads"] or r["stack_frame"])),
            (f"float32 forward kernels in at most {limit} registers",
             missing(lambda r: ptx.is_forward(r["kernel"]) and r["dtype"] == "float32"
                     and r["registers"] > limit)),
            (f"float64 forward kernels in at most {limit} registers",
             missing(lambda r: ptx.is_forward(r["kernel"]) and r["dtype"] == "float64"
                     and r["registers"] > limit))]


def markdown(rows, tools, capabilities, per_output):
    archs = [f"sm_{cc}" for cc in capabilities]
    by_key = {(r["kernel"], r["dtype"], r["arch"]): r for r in rows}
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    operators = ptx.operator_kernels()
    lines = ["# PTX resources of the cuda kernels", "",
             "Every cuda kernel compiled to PTX by Numba (no GPU needed) and assembled by `ptxas -v`. "
             "Per thread: registers, spill stores/loads and stack frame (local memory) in bytes; shared "
             "memory per block in bytes; occupancy: the share of an SM's threads resident at that "
             f"register count with {BLOCK}-thread blocks; f64: float64 instructions in the float32 PTX. "
             "Forward kernels are in bold. Traffic: the bytes a kernel's threads read and write per "
             "element of the operator's output, float32, before any cache (each element a thread "
             "reads or writes counted at its size, an atomic add as a read and a write), counted on "
             "the CUDA simulator at the operator's example of the demo's simulator size (three boxes "
             "inside the map; `ptx.memory_traffic`); deform_conv2d's matrix products (cuBLAS through "
             "CuPy) are not in it.", ""]
    lines += [f"- {tool}: {version}" for tool, version in tools.items()]
    lines += [f"- numba_droi {numba_droi.__version__}, numba {numba.__version__}, "
              f"numba-cuda {importlib.metadata.version('numba-cuda')}, Python {platform.python_version()}, "
              f"{platform.machine()} {platform.system()}", ""]
    measures = ("registers", "occupancy", "spill st/ld", "stack", "shared")
    columns = [f"{arch} {what}" for arch in archs for what in measures]
    lines += ["| operator | kernel | dtype | " + " | ".join(columns)
              + " | f64 | read B/output | written B/output |",
              "|---|---|---|" + "---:|" * len(columns) + "---:|---:|---:|"]
    for kernel in kernels:
        label = f"**{kernel}**" if ptx.is_forward(kernel) else kernel
        for dtype in ptx.DTYPES:
            cells = []
            for arch in archs:
                r = by_key[kernel, dtype, arch]
                cells += [r["registers"], f"{occupancy(r['registers']):.1%}",
                          f"{r['spill_stores']}/{r['spill_loads']}", r["stack_frame"], r["shared"]]
            f64 = by_key[kernel, dtype, archs[0]]["f64"]
            cells.append("" if f64 is None else f64)
            _, read, written = per_output.get(kernel, (None, None, None))
            counted = dtype == "float32" and read is not None
            cells += [f"{read:.1f}", f"{written:.1f}"] if counted else ["", ""]
            lines.append(f"| {operators[kernel]} | {label} | {dtype} | " + " | ".join(map(str, cells)) + " |")
    lines += ["", "## Targets", ""]
    for target, misses in targets(rows):
        lines.append(f"- {target}: " + ("met" if not misses else "missed by " + ", ".join(misses)))
    capped = [r for r in rows if "capped_spills" in r]
    if capped:
        lines.append(f"- capped at {ptx.FORWARD_REGISTER_TARGET} registers (`ptxas -maxrregcount`), the "
                     "forward kernels over the target would spill (stores + loads, bytes): "
                     + ", ".join(f"{r['kernel']} {r['dtype']} {r['arch']} {r['capped_spills']}"
                                 for r in capped))
    forward = [r for r in rows if ptx.is_forward(r["kernel"])]
    for dtype in ptx.DTYPES:
        counts = [r["registers"] for r in forward if r["dtype"] == dtype]
        lines.append(f"- {dtype} forward kernels: {min(counts)} to {max(counts)} registers")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", nargs="+", default=["80", "90"])
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    rows, tools = measure(args.capabilities)
    report = markdown(rows, tools, args.capabilities, traffic())
    print(report)
    if not args.no_save:
        path = os.path.join(RESULTS, "ptx_report.md")
        with open(path, "w") as f:
            f.write(report)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
