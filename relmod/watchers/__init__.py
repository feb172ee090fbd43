"""The watcher backends behind :mod:`relmod.watch`, which is where to import them from.

- :mod:`relmod.watchers.base`: :class:`ChangeBatch`, the :class:`Watcher` protocol, the watched
  scope and the threaded base both backends build on.
- :mod:`relmod.watchers.native`: :class:`WatchfilesWatcher`, native events through watchfiles.
- :mod:`relmod.watchers.polling`: :class:`PollingWatcher`, a stat walk every interval.

:func:`relmod.watch.find_default_watcher` chooses between the two.
"""
