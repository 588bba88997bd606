"""Stack-relative vector traffic of the CPU scan kernel's loops, per target, without running it.

Compiles ``kernels/cpu/cpu_scan.cc`` to assembly with the build's own flags
(``cpu_scan.compile_command(..., "-S")``) for each target and counts, per function and
inside loops only (the lines between a label and a later jump back to it), the vector
instructions whose memory operand is on the stack (``(%rsp)`` on x86, ``[sp`` on ARM, or
a register the function only sets from it: a frame pointer, an array of vectors on the
stack): spills and reloads when the states and temporaries of a block do not
fit the register file. ``moves`` counts plain loads and stores (``vmov*``,
``ldr``/``str``/``ldp``/``stp`` of vector registers), ``all`` adds reloads folded into
arithmetic (``vfmadd231ps 64(%rsp), ...``).

    python scripts/kernel_asm_report.py                                 # native and x86-64-v3
    python scripts/kernel_asm_report.py --targets native,x86-64-v3,x86-64 --functions
    python scripts/kernel_asm_report.py --targets aarch64-linux-gnu-g++:armv8-a
    python scripts/kernel_asm_report.py --source old_cpu_scan.cc       # e.g. git show HEAD~1:kernels/cpu/cpu_scan.cc

A target is ``[COMPILER:]MARCH``; the compiler defaults to ``$CXX``, else ``c++``. The
summary line sums the kernel's functions (``--kernel``: the forward and backward passes and
their handlers, not the XLA FFI's argument decoding); ``--functions`` lists every function.
Exits 1 when a target does not compile.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from aum_jax.kernels.cpu import cpu_scan

# Registers that point into the stack frame: the stack pointer, and any that a function only
# ever sets from it (a frame pointer, or the address of an array of vectors on the stack).
X86_STACK_POINTERS, ARM_STACK_POINTERS = ("%rsp",), ("sp",)
X86_FROM_STACK = re.compile(r"^(lea[lq]?\s+-?\d*\((%rsp|%rbp)\)|mov[lq]?\s+(%rsp|%rbp)),\s*%r\w+$")
ARM_FROM_STACK = re.compile(r"^(add\s+x\d+,\s*(sp|x29),|mov\s+x\d+,\s*sp$)")
X86_WRITTEN = re.compile(r"^(?!cmp|test|push|j|call)\S+\s.*,\s*%(r\w+)$")  # AT&T: the destination is last
ARM_WRITTEN = re.compile(r"^(?!cmp|cmn|tst|st|b|cb|tb)\S+\s+([xw]\d+),")  # ARM: the destination is first
ARM_VECTOR_MEMORY = re.compile(r"^(ldr|str|ldp|stp|ldur|stur|ld1|st1)\b.*\b[qv]\d+")
# The functions that hold the kernel's loops over time.
KERNEL_FUNCTIONS = r"\(anonymous namespace\)::(Decays|Walk|BackwardPass)<"
JUMP = re.compile(r"^(j[a-z]+|b[a-z.]*|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.L\w+)$")


def _x86_register(name: str) -> str:
    """%r9d, %eax -> %r9, %rax: the 64-bit register a write lands in."""
    name = re.sub(r"^(r\d+)[dwb]$", r"\1", name)
    return "%" + (re.sub(r"^e", "r", name) if re.match(r"^e[a-z]{2}$", name) else name)


def stack_operand(lines: list[str]) -> re.Pattern:
    """A memory operand based on a register that points into the stack, in these lines' function."""
    writes: dict[str, list[bool]] = collections.defaultdict(list)  # register -> from the stack, per write
    for line in lines:
        if m := X86_WRITTEN.match(line):
            writes[_x86_register(m.group(1))].append(bool(X86_FROM_STACK.match(line)))
        elif m := ARM_WRITTEN.match(line):
            writes["x" + m.group(1)[1:]].append(bool(ARM_FROM_STACK.match(line)))
    derived = [register for register, from_stack in writes.items() if all(from_stack)]
    x86 = [*X86_STACK_POINTERS, *(r for r in derived if r.startswith("%"))]
    arm = [*ARM_STACK_POINTERS, *(r for r in derived if r.startswith("x"))]
    return re.compile(rf"\(({'|'.join(x86)})[,)]|\[({'|'.join(arm)})[,\]]")


def is_stack_vector(instruction: str, stack: re.Pattern) -> tuple[bool, bool]:
    """(vector instruction on a stack operand, and it is a plain move) for one line of assembly."""
    if not stack.search(instruction):
        return False, False
    if "%" in instruction:  # x86
        vector = instruction.startswith("v") or re.search(r"%[xyz]mm", instruction) is not None
        return vector, vector and instruction.startswith(("vmov", "mov"))
    return (True, True) if ARM_VECTOR_MEMORY.match(instruction) else (False, False)


def functions(assembly: str) -> dict[str, list[str]]:
    """Function name -> its instruction and label lines (comments and directives dropped)."""
    names = set(re.findall(r"^\s*\.type\s+([^,\s]+),\s*[@%]function", assembly, re.M))
    x86 = "%rsp" in assembly  # '#' starts a comment on x86 and an immediate on ARM, where '//' does
    found: dict[str, list[str]] = {}
    current = None
    for raw in assembly.splitlines():
        line = raw.split("#" if x86 else "//")[0].strip()
        if line.endswith(":") and line[:-1] in names:
            current = line[:-1]
            found[current] = []
        elif current and line.startswith(".size"):
            current = None
        elif current and line and (not line.startswith(".") or line.endswith(":")):
            found[current].append(line)
    return found


def loop_lines(lines: list[str]) -> set[int]:
    """Indices of the lines inside a loop: from a label to a later jump back to it."""
    labels = {line[:-1]: i for i, line in enumerate(lines) if line.endswith(":")}
    inside: set[int] = set()
    for i, line in enumerate(lines):
        jump = JUMP.match(line)
        if jump and labels.get(jump.group(2), i + 1) <= i:
            inside.update(range(labels[jump.group(2)], i + 1))
    return inside


def count(assembly: str) -> dict[str, tuple[collections.Counter, list[str]]]:
    """Per function: stack vector instructions in loops ('all', 'moves') and anywhere ('anywhere'),
    and the lines of those in loops."""
    result = {}
    for name, lines in functions(assembly).items():
        inside, stack = loop_lines(lines), stack_operand(lines)
        tally: collections.Counter = collections.Counter()
        shown = []
        for i, line in enumerate(lines):
            vector, move = is_stack_vector(line, stack)
            tally["anywhere"] += vector
            if i in inside and vector:
                tally["all"] += 1
                tally["moves"] += move
                shown.append(line)
        result[name] = tally, shown
    return result


def demangle(names: list[str]) -> dict[str, str]:
    if not shutil.which("c++filt"):
        return {n: n for n in names}
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, done.stdout.splitlines()))


def report(target: str, source: pathlib.Path, kernel: re.Pattern, per_function: bool, show: re.Pattern | None) -> bool:
    compiler, _, march = target.rpartition(":")
    compiler = compiler or os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        output = pathlib.Path(tmp) / "cpu_scan.s"
        command = cpu_scan.compile_command(compiler, march, output, "-S")
        command[command.index(str(cpu_scan.SOURCE))] = str(source)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{target}: does not compile\n{done.stderr[-2000:]}")
            return False
        counted = count(output.read_text())
    tallies = {name: tally for name, (tally, _) in counted.items()}
    names = demangle(sorted(tallies))
    ours = {name: tally for name, tally in tallies.items() if kernel.search(names[name])}
    total = sum(ours.values(), collections.Counter())
    print(f"{target:32s} kernel functions: {len(ours):3d}; stack vector ops in their loops: {total['all']:5d} "
          f"(moves {total['moves']:5d}); anywhere in them: {total['anywhere']:5d}")
    if per_function:
        for name, tally in sorted(tallies.items(), key=lambda kv: -kv[1]["all"]):
            if tally["anywhere"]:
                mark = "*" if name in ours else " "
                print(f"  {mark} {tally['all']:5d} {tally['moves']:5d} {tally['anywhere']:5d}  {names[name][:150]}")
    for name, (_, lines) in counted.items():
        if show and show.search(names[name]) and lines:
            print(f"  {names[name][:150]}:\n" + "".join(f"      {line}\n" for line in lines), end="")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="native,x86-64-v3", help="comma-separated [COMPILER:]MARCH")
    parser.add_argument("--source", type=pathlib.Path, default=cpu_scan.SOURCE, help="the kernel source to compile")
    parser.add_argument("--kernel", default=KERNEL_FUNCTIONS, help="regex of the kernel's functions (demangled)")
    parser.add_argument("--show", type=re.compile, help="print the counted lines of the functions matching this regex")
    parser.add_argument("--functions", action="store_true",
                        help="every function with stack vector ops: in loops, moves in loops, anywhere (* kernel)")
    args = parser.parse_args()
    kernel = re.compile(args.kernel)
    results = [report(target, args.source, kernel, args.functions, args.show) for target in args.targets.split(",")]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
