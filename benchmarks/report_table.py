"""The two-column table the benchmarks print (name, value with a format)."""


def print_rows(rows: list[tuple[str, float, str]]) -> None:
    """Print ``(name, value, format spec)`` rows under a 'what / value' header."""
    width = max(len(name) for name, _, _ in rows)
    print(f"{'what':{width}s} {'value':>12s}")
    for name, value, fmt in rows:
        print(f"{name:{width}s} {value:12{fmt}}")
