"""The watcher backends behind :mod:`relmod.watch`, which is where to import them from.

- :mod:`relmod.watchers.base`: :class:`ChangeBatch`, the :class:`Watcher` protocol, the watched
  scope and the threaded base every backend builds on.
- :mod:`relmod.watchers.inotify`: :class:`InotifyWatcher`, Linux inotify read directly (the
  default on Linux); :mod:`relmod.watchers.inotify_kernel` holds its ctypes system calls and
  event decoding.
- :mod:`relmod.watchers.native`: :class:`WatchfilesWatcher`, native events through watchfiles
  (the default elsewhere).
- :mod:`relmod.watchers.polling`: :class:`PollingWatcher`, a stat walk every interval.

:func:`relmod.watch.find_default_watcher` chooses between them.
"""
