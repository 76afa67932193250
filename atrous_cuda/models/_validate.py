"""Constructor-argument checks shared by the models: each error names the
model, the argument, the value given and what was expected."""


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """An int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: expected {name} to be an int >= {minimum}, got {value!r}")
    return value


def check_ints(owner: str, name: str, values, minimum: int = 1, length=None, allow_empty: bool = False) -> tuple:
    """A sequence of ints (not bools) >= minimum; of the given length if any, non-empty unless allowed."""
    what = f"{length} ints" if length is not None else "a sequence of ints"
    try:
        items = tuple(values)
    except TypeError:
        raise ValueError(f"{owner}: expected {name} to be {what} >= {minimum}, got {values!r}") from None
    if ((length is not None and len(items) != length) or (not items and not allow_empty)
            or not all(not isinstance(v, bool) and isinstance(v, int) and v >= minimum for v in items)):
        raise ValueError(f"{owner}: expected {name} to be {what} >= {minimum}"
                         f"{'' if allow_empty or length is not None else ' (at least one)'}, got {values!r}")
    return items
