"""The command palette (ctrl+p) offers the same actions as the keys."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


@dataclass(frozen=True)
class KeyAction:
    """One user action: its key(s), the App action it runs, a footer label and a help text."""

    key: str
    shown_key: str
    action: str
    label: str
    help: str
    footer: bool = True
    # Resolved as the key arrives, before the focused widget sees it: keys queued behind it
    # then go where the action sent the focus (`/`: the filter bar).
    priority: bool = False


class ActionCommands(Provider):
    """Every dashboard action, matched on its help text."""

    async def discover(self) -> Hits:
        for item in self._actions():
            yield DiscoveryHit(item.help, partial(self._run, item), help=f"key: {item.shown_key}")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for item in self._actions():
            score = matcher.match(item.help)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(item.help),
                    partial(self._run, item),
                    help=f"key: {item.shown_key}",
                )

    def _actions(self) -> tuple[KeyAction, ...]:
        actions: tuple[KeyAction, ...] = getattr(self.app, "KEY_ACTIONS", ())
        return actions

    async def _run(self, item: KeyAction) -> None:
        await self.app.run_action(item.action)
