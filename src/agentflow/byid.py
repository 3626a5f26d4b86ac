"""Items of a list found by their ``id`` through a table, not a scan: the runner asks for
steps by id many times per step."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=HasId)


class ById(Generic[T]):
    """The table of one list, made again when the list is another one."""

    def __init__(self) -> None:
        self._of: list[T] | None = None
        self._table: dict[str, T] = {}

    def find(self, items: list[T], item_id: str) -> T:
        if self._of is not items:
            table: dict[str, T] = {}
            for s in items:
                table.setdefault(s.id, s)  # (the first of an id, as a scan finds it)
            self._of, self._table = items, table
        found = self._table.get(item_id)
        if found is None:  # (a list changed in place since: look again)
            found = next((s for s in items if s.id == item_id), None)
        if found is None:
            raise KeyError(item_id)
        return found

    def __eq__(self, other: object) -> bool:
        # A cache: never what makes two models (which compare their private parts) differ.
        return isinstance(other, ById)

    __hash__ = None  # type: ignore[assignment]
