#!/usr/bin/env python3
"""Generates model/unicode_tables.cpp: the Unicode data the tokenizer needs, from Debian's unicode-data.

    python3 scripts/gen_unicode_tables.py [/usr/share/unicode] > model/unicode_tables.cpp

Tables (all sorted, for binary search):
  letter / number / whitespace ranges   \\p{L} (Lu Ll Lt Lm Lo), \\p{N} (Nd Nl No), \\s (White_Space)
  combining classes                     ranges of code points with a non-zero canonical combining class
  canonical decompositions              code point -> one or two code points (Hangul is algorithmic)
  primary composites                    (first, second) -> composite, excluding Full_Composition_Exclusion
No PCRE2 / ICU: the GPU machine has neither (DESIGN.md section 4).
"""
import os
import sys


def read_unicode_data(path):
    """Yields (code point, fields) for every assigned code point, expanding <..., First>/<..., Last> ranges."""
    first = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(";")
            cp = int(fields[0], 16)
            name = fields[1]
            if name.endswith(", First>"):
                first = cp
                continue
            if name.endswith(", Last>"):
                for c in range(first, cp + 1):
                    yield c, fields
                first = None
                continue
            yield cp, fields


def read_property(path, prop):
    """Code points carrying a binary property in a PropList-style file."""
    out = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split(";")]
            if parts[1] != prop:
                continue
            if ".." in parts[0]:
                a, b = (int(x, 16) for x in parts[0].split(".."))
            else:
                a = b = int(parts[0], 16)
            out.update(range(a, b + 1))
    return out


def to_ranges(cps):
    ranges = []
    for c in sorted(cps):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ranges


def emit_ranges(out, name, ranges):
    out.append(f"const codepoint_range {name}[] = {{")
    for i in range(0, len(ranges), 6):
        out.append("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in ranges[i:i + 6]))
    out.append("};")
    out.append(f"const std::size_t {name}_size = {len(ranges)};")
    out.append("")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/unicode"
    letters, numbers = set(), set()
    ccc = {}
    decomp = {}
    for cp, fields in read_unicode_data(os.path.join(root, "UnicodeData.txt")):
        cat = fields[2]
        if cat in ("Lu", "Ll", "Lt", "Lm", "Lo"):
            letters.add(cp)
        elif cat in ("Nd", "Nl", "No"):
            numbers.add(cp)
        if int(fields[3]) != 0:
            ccc[cp] = int(fields[3])
        d = fields[5]
        if d and not d.startswith("<"):  # canonical only; <tag> mappings are compatibility
            decomp[cp] = [int(x, 16) for x in d.split()]
    space = read_property(os.path.join(root, "PropList.txt"), "White_Space")
    exclusions = read_property(os.path.join(root, "DerivedNormalizationProps.txt"),
                               "Full_Composition_Exclusion")
    comps = sorted((v[0], v[1], cp) for cp, v in decomp.items() if len(v) == 2 and cp not in exclusions)

    ccc_ranges = []  # [first, last, class]
    for c in sorted(ccc):
        if ccc_ranges and ccc_ranges[-1][1] == c - 1 and ccc_ranges[-1][2] == ccc[c]:
            ccc_ranges[-1][1] = c
        else:
            ccc_ranges.append([c, c, ccc[c]])

    version = "unknown"
    with open(os.path.join(root, "DerivedNormalizationProps.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("# DerivedNormalizationProps-"):
                version = line[len("# DerivedNormalizationProps-"):].strip().replace(".txt", "")
                break

    out = [
        "// GENERATED FILE - do not edit. Regenerate with:",
        "//   python3 scripts/gen_unicode_tables.py /usr/share/unicode > model/unicode_tables.cpp",
        f"// Source: Unicode Character Database {version} (Debian package unicode-data).",
        "// clang-format off",
        '#include "model/unicode_tables.h"',
        "",
        "namespace kvcal::unicode_tables {",
        "",
        f'const char* const ucd_version = "{version}";',
        "",
    ]
    emit_ranges(out, "letter", to_ranges(letters))
    emit_ranges(out, "number", to_ranges(numbers))
    emit_ranges(out, "whitespace", to_ranges(space))
    out.append("const combining_class_range combining_class[] = {")
    for i in range(0, len(ccc_ranges), 5):
        out.append("    " + " ".join(f"{{0x{a:X}, 0x{b:X}, {k}}}," for a, b, k in ccc_ranges[i:i + 5]))
    out.append("};")
    out.append(f"const std::size_t combining_class_size = {len(ccc_ranges)};")
    out.append("")
    out.append("const decomposition_entry decomposition[] = {")
    items = sorted(decomp.items())
    for i in range(0, len(items), 4):
        out.append("    " + " ".join(
            f"{{0x{cp:X}, 0x{v[0]:X}, 0x{(v[1] if len(v) > 1 else 0):X}}}," for cp, v in items[i:i + 4]))
    out.append("};")
    out.append(f"const std::size_t decomposition_size = {len(items)};")
    out.append("")
    out.append("const composition_entry composition[] = {")
    for i in range(0, len(comps), 4):
        out.append("    " + " ".join(f"{{0x{a:X}, 0x{b:X}, 0x{c:X}}}," for a, b, c in comps[i:i + 4]))
    out.append("};")
    out.append(f"const std::size_t composition_size = {len(comps)};")
    out.append("")
    out.append("}  // namespace kvcal::unicode_tables")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
