"""docs/BENCHMARKS.md is written by several benchmarks, each owning the `## ` sections it names."""


def split_sections(doc):
    """The text before the first `## ` heading, and each `## ` section (heading line included)."""
    head, sections, current = [], [], None
    for line in doc.splitlines():
        if line.startswith("## "):
            current = [line]
            sections.append(current)
        elif current is None:
            head.append(line)
        else:
            current.append(line)
    return head, sections


def replace_section(doc, heading, lines):
    """`doc` with the section titled `heading` (a `## ` line) replaced by `lines`, or appended."""
    head, sections = split_sections(doc)
    new = [heading, "", *lines, ""]
    for i, section in enumerate(sections):
        if section[0].strip() == heading:
            sections[i] = new
            break
    else:
        sections.append(new)
    out = list(head)
    for section in sections:
        while out and out[-1] == "":
            out.pop()
        out += ["", *section]
    return "\n".join(out).rstrip() + "\n"


def foreign_sections(doc, owned):
    """The sections of `doc` whose headings do not start with any of `owned`, as text."""
    _, sections = split_sections(doc)
    keep = [s for s in sections if not any(s[0].startswith(o) for o in owned)]
    return "\n".join("\n".join(s).rstrip() + "\n" for s in keep)
